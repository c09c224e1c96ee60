"""The project's logger (orchestrator/logs.py): INFO to stdout, WARNING and above to stderr, both
resolved when a line is logged (so redirecting them captures it), configured once however often
configure() is called."""

from __future__ import annotations

import contextlib
import io
import logging

from orchestrator.logs import NAME, RAY_SETUP_HOOK, configure, fmt, progress


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


def test_ray_workers_are_configured_by_the_same_function():
    module, _, func = RAY_SETUP_HOOK.rpartition(".")
    assert (module, func) == (configure.__module__, configure.__name__)


def test_progress_and_fmt():
    configure()
    assert fmt({"loss": 0.123456, "nan": float("nan"), "step": 3, "run": "x"}) == "loss=0.1235"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        progress(logging.getLogger("orchestrator.stage"), "source:nli", 5, 10, {"train_loss": 0.5})
    assert out.getvalue() == "[source:nli] step 5/10: train_loss=0.5\n"
