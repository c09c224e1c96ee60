"""The project's one logger, ``orchestrator`` (every module logs to a child of it), and its set-up.

The CLI configures it once. Ray runs stages in processes of its own (graph nodes, Train workers,
Tune trials); they are configured the same way through Ray's ``worker_process_setup_hook``, which
the CLI passes to ``ray.init`` (:data:`RAY_SETUP_HOOK`), and Ray forwards their lines to the
driver's terminal. Progress goes to stdout, warnings and errors to stderr.
"""

from __future__ import annotations

import logging
import math
import sys

NAME = "orchestrator"
RAY_SETUP_HOOK = f"{__name__}.configure"


class _CurrentStream(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` / ``sys.stderr`` is when a line is logged (not when the
    handler was made), so a caller that redirects them (a notebook, a test) gets the lines."""

    def __init__(self, name: str):
        super().__init__()
        self._name = name

    @property
    def stream(self):
        return getattr(sys, self._name)

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure(level: int = logging.INFO) -> logging.Logger:
    """Lines of ``level`` and above: below WARNING to stdout, the rest to stderr. Idempotent."""
    logger = logging.getLogger(NAME)
    logger.setLevel(level)
    logger.propagate = False
    if not any(isinstance(h, _CurrentStream) for h in logger.handlers):
        out, err = _CurrentStream("stdout"), _CurrentStream("stderr")
        out.addFilter(lambda record: record.levelno < logging.WARNING)
        err.setLevel(logging.WARNING)
        for handler in (out, err):
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
    return logger


def progress(logger: logging.Logger, tag: str, step: int, steps: int, metrics: dict[str, float]) -> None:
    logger.info("[%s] step %d/%d: %s", tag, step, steps, fmt(metrics))


def fmt(metrics: dict) -> str:
    """``name=value`` for the float metrics, NaNs left out."""
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float) and not math.isnan(v))
