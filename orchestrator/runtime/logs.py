"""The project's one logger, ``orchestrator`` (every module logs to a child of it), and its set-up.

The CLI configures it. Ray runs the stages in processes the CLI does not start (graph nodes, Train
workers, Tune trials): the functions Ray calls there are marked :func:`in_ray_worker`, which applies
the same configuration first. There each line is written as one marked JSON record, which Ray
forwards to the driver, where ``console`` shows it among the project's lines and keeps Ray's own
output in a log file. Progress goes to stdout, warnings and errors to stderr.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
from collections.abc import Callable

NAME = "orchestrator"
# Starts a forwarded line that is one of the project's records: ASCII unit separators, which no
# library prints, so nothing else is mistaken for one.
MARK = "\x1fmpt\x1f"


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


class _Record(logging.Formatter):
    """A record as one marked JSON line: what a Ray worker prints for the driver's console."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return MARK + json.dumps({"level": record.levelno, "msg": message,
                                  "progress": getattr(record, "progress", None)})


def decode(line: str) -> dict | None:
    """The record of a marked line (``_Record``); None for any other line."""
    if not line.startswith(MARK):
        return None
    try:
        return json.loads(line[len(MARK):])
    except ValueError:
        return None


def is_tick(progress: dict | None) -> bool:
    """Whether a record's progress (``progress`` or ``ticker``) is a tick, which only a live display shows."""
    return bool(progress) and progress.get("metrics") is None


def _not_a_tick(record: logging.LogRecord) -> bool:
    return not is_tick(getattr(record, "progress", None))


def configure(level: int = logging.INFO, forwarded: bool = False) -> logging.Logger:
    """Lines of ``level`` and above: below WARNING to stdout, the rest to stderr. With ``forwarded``
    (a Ray worker) every line is a marked record, progress ticks included; otherwise ticks, which
    only a live display shows, are dropped. Idempotent."""
    logger = logging.getLogger(NAME)
    logger.setLevel(level)
    logger.propagate = False
    if any(isinstance(h, _CurrentStream) for h in logger.handlers):
        return logger
    out, err = _CurrentStream("stdout"), _CurrentStream("stderr")
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(_Record() if forwarded else logging.Formatter("%(message)s"))
        if not forwarded:
            handler.addFilter(_not_a_tick)
        logger.addHandler(handler)
    return logger


def in_ray_worker(fn):
    """``fn``, configuring the logger first (as forwarded records when Ray runs it in a worker
    process): for the functions Ray runs in its own processes.

    Not Ray's ``worker_process_setup_hook``: that gives the whole job a runtime env, and Ray then
    starts a fresh worker for every task instead of using the ones it prestarts (measured: 5 s more
    on a 25 s Train test).
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        configure(forwarded=_in_a_ray_worker())
        return fn(*args, **kwargs)

    return wrapper


def _in_a_ray_worker() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray and ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE)


def progress(logger: logging.Logger, tag: str, step: int, steps: int, metrics: dict[str, float]) -> None:
    """An eval's line, ``[tag] step N/M: metrics``; the live display shows its eval metrics."""
    shown = fmt({k: v for k, v in metrics.items() if k.startswith("eval_")})
    logger.info("[%s] step %d/%d: %s", tag, step, steps, fmt(metrics),
                extra={"progress": {"tag": tag, "step": step, "steps": steps, "metrics": shown}})


def ticker(logger: logging.Logger, tag: str, steps: int,
           record: Callable[[int, float], None] = lambda step, loss: None) -> Callable[[int, float], None]:
    """``on_step`` that passes each step's loss to ``record`` and ticks the live display about 20
    times over a job's ``steps`` (a moving bar, never printed as lines)."""
    every = max(1, steps // 20)

    def tick(step: int, loss: float) -> None:
        record(step, loss)
        if step % every == 0:
            logger.info("[%s] step %d/%d", tag, step, steps,
                        extra={"progress": {"tag": tag, "step": step, "steps": steps, "metrics": None}})

    return tick


def fmt(metrics: dict) -> str:
    """``name=value`` for the float metrics, NaNs left out."""
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float) and not math.isnan(v))
