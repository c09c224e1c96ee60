"""The CLI run in process, as the integration tests run pipelines: on the module's local Ray, in a
working directory of the test's own, with what it printed captured."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from orchestrator.cli import main

from .specs import SMOKE


def run_cli(cwd: Path, argv: list[str]) -> tuple[int, str]:
    """``python -m orchestrator ARGV`` in ``cwd``; returns its exit code and what it printed."""
    out = io.StringIO()
    before = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out):
            rc = main(argv)
    finally:
        os.chdir(before)
    return rc, out.getvalue()


def run_smoke(tmp_path: Path, *args: str, spec: str | Path = SMOKE) -> tuple[int, str]:
    """``run`` of the smoke spec (or ``spec``) with its store at ``tmp_path/mlflow.db``."""
    return run_cli(tmp_path, ["run", str(spec), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", *args])
