"""What every figure of the overhead benchmark uses: progress lines, Markdown tables, torch threads
of a Ray worker, and this package run again as a worker process (the plain loop, P3's distillation)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def progress(message: str) -> None:
    print(f"[overhead] {message}", file=sys.stderr, flush=True)


def threads_for(resources) -> int:
    """The torch threads of a Ray worker holding ``cpus_per_worker`` CPUs: Ray sets OMP_NUM_THREADS
    to max(1, floor(CPUs)) in each worker, so a half-CPU worker runs on one thread."""
    return max(1, math.floor(resources.cpus_per_worker))


def cell(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else "" if value is None else str(value)


def table(headers: list[str], rows: list[list]) -> str:
    return "\n".join(["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|",
                      *["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]])


def child_env() -> dict:
    """The subprocesses import the orchestrator (and this package) from the checkout it sits in."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def worker(args, sets: list[str], workdir: Path, *extra: str) -> tuple[float, float, dict]:
    """This package as a fresh process (``python -m bench.overhead --worker ...``); (start, end, its
    JSON result)."""
    out = workdir / f"worker-{time.time_ns()}.json"
    command = [sys.executable, "-m", __package__, "--spec", args.spec, *[f"--set={s}" for s in sets],
               "--result", str(out), *extra]
    started = time.time()
    subprocess.run(command, env=child_env(), check=True)
    return started, time.time(), json.loads(out.read_text())
