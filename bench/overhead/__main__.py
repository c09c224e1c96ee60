"""The overhead benchmark's command line (``python -m bench.overhead --help``; what it measures: the
package's docstring): the parts to run, the runs in their order (P1's plain loop and orchestrator
run, P2's runs), then each part's section, P3's and P4's with their own runs. With ``--worker`` it
is one of those worker processes instead (the plain loop, P3's distillation at one K)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.spec.loading import load_spec

from . import __doc__ as ABOUT
from . import p1, p2, p3, p4
from .common import REPO, progress, worker
from .plain import plain_loop
from .runs import full_grid, read_orchestrator, run_orchestrator

PARTS = ("P1", "P2", "P3", "P4")


def main() -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__package__}", description=ABOUT.splitlines()[0])
    parser.add_argument("--spec", default=str(REPO / "pipelines" / "demo.yaml"))
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="spec override for the plain loop and the orchestrator (repeatable)")
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts, e.g. P1,P3")
    parser.add_argument("--p4-set", action="append", default=[], metavar="KEY=VALUE",
                        help="overrides (on top of --set) of a second run for P4, e.g. an ASHA sweep over a wider grid")
    parser.add_argument("--p3-steps", type=int, default=10, help="distillation steps per K in P3")
    parser.add_argument("--out", help="keep the runs' files (MLflow stores, logs, ray_results) in this directory")
    parser.add_argument("--worker", choices=["plain", "distill-memory"], help=argparse.SUPPRESS)
    parser.add_argument("--scope", default="full", help=argparse.SUPPRESS)
    parser.add_argument("--trials", help=argparse.SUPPRESS)
    parser.add_argument("--matched-threads", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    spec = load_spec(args.spec, args.sets)
    if args.worker == "plain":
        saved = Path(args.result).with_suffix("")
        saved.mkdir()
        result = plain_loop(spec, json.loads(Path(args.trials).read_text()), args.scope, saved, args.matched_threads)
    elif args.worker == "distill-memory":
        result = p3.distill_memory(spec, args.k, args.p3_steps)
    if args.worker:
        Path(args.result).write_text(json.dumps(result))
        return
    parts = {p.strip().upper() for p in args.only.split(",")}
    if parts - set(PARTS):
        parser.error(f"--only takes {', '.join(PARTS)}")
    unsupported = [what for what, yes in (
        ("the joint_multitask baseline", "joint_multitask" in spec.target.baselines),
        ("seed_scope: pipeline over several seeds", spec.seed_scope == "pipeline" and len(spec.seed_list()) > 1),
        ("GPU workers", any(s.resources.use_gpu for s in (spec.source, spec.distill, spec.target)))) if yes]
    if unsupported and parts & {"P1", "P2", "P4"}:
        sys.exit(f"the plain loop does not implement {', '.join(unsupported)}; choose parts with --only P3"
                 + (", or add --set seed_scope=targets (the demo's default is pipeline)" if "seed_scope" in
                    " ".join(unsupported) else ""))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        benchmark(args, spec, parts, Path(args.out).resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
            benchmark(args, spec, parts, Path(tmp))


def benchmark(args, spec, parts: set[str], workdir: Path) -> None:
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    print(f"# Orchestrator overhead: {args.spec}{''.join(f' --set {s}' for s in args.sets)}\n\n"
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}, commit {commit}, {os.cpu_count()} CPUs"
          f"{f', files in {workdir}' if args.out else ''}")
    p4_main = "P4" in parts and not args.p4_set and spec.target.scheduler.type == "asha"
    plain = orch = None  # P1's runs (P4 reads them too), when P1 or P4 asks for them
    if parts & {"P1", "P2"} or p4_main:
        (workdir / "trials.json").write_text(json.dumps(full_grid(spec)))
    if "P1" in parts or p4_main:
        scope = "full" if "P1" in parts else "mpt"
        progress(f"plain loop ({scope}, torch's default threads)")
        p_start, p_end, plain = worker(args, args.sets, workdir, "--worker", "plain", "--scope", scope,
                                       "--trials", str(workdir / "trials.json"))
        progress(f"plain loop done in {p_end - p_start:.1f} s")
        o_start, o_end, uri = run_orchestrator(args.spec, args.sets, workdir / "orchestrator")
        orch, parent_end = read_orchestrator(uri, spec)
    if "P2" in parts:
        p2_runs = p2.measure(args, spec, workdir, orch if "P1" in parts else None)

    if "P1" in parts:
        p1.report(plain, orch, p_start, p_end, o_start, o_end, parent_end)
    if "P2" in parts:
        p2.report(p2_runs)
    if "P3" in parts:
        p3.run_and_report(args, workdir)
    if "P4" in parts:
        p4.report(args, spec, workdir, p4_main, plain, orch)


if __name__ == "__main__":
    main()
