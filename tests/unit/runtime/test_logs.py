"""The project's logger (orchestrator/runtime/logs.py): INFO to stdout, WARNING and above to stderr, both
resolved when a line is logged (so redirecting them captures it), configured once however often
configure() is called."""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import sys

from orchestrator.runtime.logs import NAME, configure, fmt, progress


def emit(*lines: tuple[int, str]) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        for level, msg in lines:
            logging.getLogger("orchestrator.x").log(level, msg)
    return out.getvalue(), err.getvalue()


def test_info_goes_to_stdout_and_warnings_to_stderr():
    configure()
    out, err = emit((logging.INFO, "progress line"), (logging.WARNING, "a warning"), (logging.ERROR, "an error"),
                    (logging.DEBUG, "debug detail"))
    assert out == "progress line\n"
    assert err == "a warning\nan error\n"


def test_configure_twice_does_not_duplicate_lines():
    configure()
    handlers = list(logging.getLogger(NAME).handlers)
    configure()
    assert logging.getLogger(NAME).handlers == handlers
    out, err = emit((logging.INFO, "once"), (logging.WARNING, "once too"))
    assert out == "once\n" and err == "once too\n"


def test_the_streams_are_the_ones_current_when_a_line_is_logged():
    configure()  # configured before the redirection, as the CLI is
    first = emit((logging.INFO, "first"))
    second = emit((logging.INFO, "second"))
    assert first == ("first\n", "") and second == ("second\n", "")


WORKER = """
import logging
from orchestrator.runtime.logs import in_ray_worker
def stage():
    logging.getLogger("orchestrator.pipeline.stages.x").info("from a worker")
{call}
"""


def run_in_fresh_process(call: str) -> str:
    """What a process the CLI did not configure (as a Ray worker) prints."""
    res = subprocess.run([sys.executable, "-c", WORKER.format(call=call)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_functions_run_by_ray_configure_the_logger_in_their_process():
    assert run_in_fresh_process("in_ray_worker(stage)()") == "from a worker\n"
    assert run_in_fresh_process("stage()") == ""  # unconfigured, Python drops INFO lines


def test_progress_and_fmt():
    configure()
    assert fmt({"loss": 0.123456, "nan": float("nan"), "step": 3, "run": "x"}) == "loss=0.1235"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        progress(logging.getLogger("orchestrator.stage"), "source:nli", 5, 10, {"train_loss": 0.5})
    assert out.getvalue() == "[source:nli] step 5/10: train_loss=0.5\n"
