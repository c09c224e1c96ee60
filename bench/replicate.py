"""Do the demo's verdicts replicate? A measurement, not a test.

Runs one spec twice with disjoint seed sets (each seed retraining the sources, the distillation and
every target trial), in one fresh MLflow store, then `report`s both runs together: each run's
verdict table, and per target and method whether the two verdicts agree (a `better` in one and a
`worse` in the other is a contradiction). About twice the demo's time:

    PYTHONPATH=. python bench/replicate.py [--spec pipelines/demo.yaml] [--seeds 0,1,2 --seeds 3,4,5] [--set K=V]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator.results.runs import finished_parents
from orchestrator.spec.loading import load_spec

DEMO = Path(__file__).resolve().parents[1] / "pipelines" / "demo.yaml"


def orchestrator(workdir: Path, *argv: str) -> None:
    """One verb in ``workdir`` (its store is ./mlflow.db there), its output shown as it comes."""
    code = subprocess.run([sys.executable, "-m", "orchestrator", *argv], cwd=workdir).returncode
    if code != 0:
        sys.exit(f"`{' '.join(argv)}` exited {code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(DEMO))
    parser.add_argument("--seeds", action="append", help="one run's seeds, comma-separated (give it twice)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="a spec override for both runs")
    parser.add_argument("--workdir", help="where the store and runs go (default: a new temporary dir, kept)")
    args = parser.parse_args()
    seed_sets = [s.split(",") for s in (args.seeds or ["0,1,2", "3,4,5"])]
    if len(seed_sets) != 2 or set(seed_sets[0]) & set(seed_sets[1]):
        sys.exit("--seeds: give two disjoint seed sets, e.g. --seeds 0,1,2 --seeds 3,4,5")
    spec_path = str(Path(args.spec).resolve())
    experiment = load_spec(spec_path, args.overrides).experiment_name()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="replicate-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"store and runs in {workdir}", flush=True)
    sets = [f"--set=seeds=[{', '.join(seeds)}]" for seeds in seed_sets]
    overrides = [f"--set={o}" for o in args.overrides]
    walls = []
    for seeds in sets:
        started = time.time()
        orchestrator(workdir, "run", spec_path, *overrides, seeds)
        walls.append(time.time() - started)
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    parents = finished_parents(client, client.get_experiment_by_name(experiment).experiment_id)[:2][::-1]
    orchestrator(workdir, "report", experiment, "--runs", *(p.info.run_id for p in parents), "--out", "replication")
    for seeds, wall in zip(seed_sets, walls):
        print(f"seeds {','.join(seeds)}: {wall:.0f} s")


if __name__ == "__main__":
    main()
