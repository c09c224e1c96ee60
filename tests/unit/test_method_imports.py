"""The method package and the data layer import no Ray and no MLflow: every function there runs in a
plain process. And the graph's modules import no transformers and no peft: a node process only
launches jobs, and those imports would cost each one about 7 s of CPU. (A fresh interpreter for
each, since this one has long imported them all.)"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import orchestrator.method

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("ray", "mlflow")
METHOD_MODULES = sorted(f"orchestrator.method.{m.name}" for m in pkgutil.iter_modules(orchestrator.method.__path__))

PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def imported_by(modules: list[str]) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    res = subprocess.run([sys.executable, "-c", PROBE, *modules], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    loaded = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(modules) <= set(loaded)  # the probe really imported them
    return loaded


def leaked(loaded: list[str], forbidden: tuple[str, ...]) -> list[str]:
    return [m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden)]


def test_every_method_module_is_listed():
    assert {"models", "train", "distill", "targets", "metrics"} <= {m.rsplit(".", 1)[1] for m in METHOD_MODULES}


def test_method_and_data_import_no_ray_and_no_mlflow():
    found = leaked(imported_by(["orchestrator.method", *METHOD_MODULES, "orchestrator.data"]), FORBIDDEN)
    assert found == [], f"imported by the method package or the data layer: {found[:20]}"


def test_the_graph_imports_no_transformers_and_no_peft():
    graph = ["orchestrator.pipeline.dag", "orchestrator.pipeline.stages.source", "orchestrator.pipeline.stages.distill",
             "orchestrator.pipeline.stages.target", "orchestrator.pipeline.cache"]
    found = leaked(imported_by(graph), ("transformers", "peft"))
    assert found == [], f"imported by the graph's modules: {found[:20]}"
