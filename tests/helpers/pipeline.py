"""The CLI run in process, as the integration tests run pipelines: on the module's local Ray, in a
working directory of the test's own, with what it printed captured; and the stage runs a pipeline
has RUNNING, as the tests that interrupt one watch them."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from orchestrator.cli import main
from orchestrator.tracking import STAGE_TAG, TASK_TAG

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


def running(client, stage: str, task: str | None = None, experiment: str = "mpt-smoke") -> list:
    """The RUNNING runs of ``stage`` (of ``task`` only, when given) in ``experiment``; none before it exists."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    where = f"tags.`{STAGE_TAG}` = '{stage}' and attributes.status = 'RUNNING'"
    return client.search_runs([found.experiment_id], where + (f" and tags.`{TASK_TAG}` = '{task}'" if task else ""))
