"""Child processes of the integration tests: started quietly, stopped by PID (a plain module, no fixtures).

- ``NO_PHONE_HOME``: environment that turns off MLflow, Hugging Face and Ray usage telemetry, for
  every process the helpers start (nothing may send beyond loopback).
- ``process_tree(pids)`` / ``alive(procs)`` / ``kill_tree(procs)`` / ``reaping(...)``: cleanup by
  PID, never by name and never with ``ray stop`` (which would kill every Ray on the machine).
- ``_patched_env(updates)``: ``os.environ`` changed for a ``with`` block, then restored;
  ``_set_pdeathsig``: a ``preexec_fn`` so a child gets SIGTERM when this process dies (Linux).
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Iterable, Iterator

import psutil

NO_PHONE_HOME = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def _as_procs(pids: Iterable[int | psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in pids:
        try:
            out.append(p if isinstance(p, psutil.Process) else psutil.Process(int(p)))
        except psutil.NoSuchProcess:
            pass
    return out


def process_tree(pids: Iterable[int | psutil.Process]) -> list[psutil.Process]:
    """The given processes plus all their live descendants (deduplicated, parents first)."""
    seen: dict[int, psutil.Process] = {}
    for p in _as_procs(pids):
        seen.setdefault(p.pid, p)
        try:
            for c in p.children(recursive=True):
                seen.setdefault(c.pid, c)
        except psutil.NoSuchProcess:
            pass
    return list(seen.values())


def alive(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """Still running (psutil checks PID + create time, so a reused PID is not 'alive')."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def kill_tree(procs: Iterable[int | psutil.Process], timeout: float = 10.0) -> list[psutil.Process]:
    """SIGTERM the processes and their descendants, SIGKILL what is left; return survivors."""
    tree = process_tree(procs)
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, left = psutil.wait_procs(tree, timeout=timeout)
    for p in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(left, timeout=timeout)
    # Children that appeared during the kill (rare) are caught by a second pass.
    late = [p for p in process_tree(alive(tree)) if p.pid not in {q.pid for q in tree}]
    if late:
        kill_tree(late, timeout)
    return alive(tree)


@contextlib.contextmanager
def reaping(*pids: int | psutil.Process, timeout: float = 10.0) -> Iterator[list[psutil.Process]]:
    """Yield a list to append processes to; on exit (error or not) kill all their trees."""
    tracked: list[psutil.Process] = _as_procs(pids)
    try:
        yield tracked
    finally:
        kill_tree(tracked, timeout)


@contextlib.contextmanager
def _patched_env(updates: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _set_pdeathsig() -> None:  # runs in the child between fork and exec (Linux only)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass
