"""MLflow servers on 127.0.0.1 for integration tests, started and stopped by PID (a plain module,
no fixtures).

- ``start_mlflow_server(tmp_dir)``: an ``mlflow server`` (SQLite backend, proxied artifacts)
  on a free loopback port; ``stop_mlflow_server(proc)``; ``wait_for_mlflow(url, proc)`` when
  started with ``wait=False``. The context manager ``mlflow_server(tmp_dir)`` stops it in a
  ``finally`` block.
- ``start_model_server(model_uri, tracking_uri, tmp_dir)``: ``mlflow models serve --env-manager
  local`` on a free loopback port, ready when ``/ping`` answers; stopped with ``stop_mlflow_server``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import psutil

from .processes import NO_PHONE_HOME, _set_pdeathsig, kill_tree, process_tree
from .sockets import LOOPBACK, free_port


def mlflow_server_command(tmp_dir: str | os.PathLike, port: int, workers: int = 1) -> list[str]:
    """The exact `mlflow server` command line (MLflow 3.17 flags)."""
    root = Path(tmp_dir).resolve()
    return [
        sys.executable, "-m", "mlflow", "server",
        "--host", LOOPBACK,
        "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",  # sqlite:////abs/path
        "--artifacts-destination", str(root / "mlartifacts"),
        "--serve-artifacts",
        "--workers", str(workers),
    ]  # fmt: skip


def wait_for_mlflow(url: str, proc: subprocess.Popen, timeout: float = 180.0, path: str = "/health",
                    what: str = "mlflow server") -> float:
    """Poll ``url + path`` until it answers 200; return the seconds waited."""
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {getattr(proc, 'log_path', '?')}")
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=5) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except (urllib.error.URLError, ConnectionError, socket.timeout):
            pass
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what} at {url} not ready after {timeout:.0f}s; see {getattr(proc, 'log_path', '?')}")
        time.sleep(0.25)


def start_mlflow_server(
    tmp_dir: str | os.PathLike, *, wait: bool = True, timeout: float = 180.0, workers: int = 1
) -> tuple[str, subprocess.Popen]:
    """Start ``mlflow server`` on 127.0.0.1:<free port>; return (``http://127.0.0.1:PORT``, Popen).

    Runs in its own session (so its whole tree can be signalled) with
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: MLflow 3.17 otherwise also starts a job runner and
    seven huey consumer processes that ignore the server's SIGTERM. The default security
    middleware (allowed hosts: localhost + private IPs) already accepts 127.0.0.1, so it stays on.
    The Popen gets ``log_path`` (server stdout+stderr) and ``url`` attributes.
    """
    root = Path(tmp_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    log_path = root / "mlflow-server.log"
    env = {**os.environ, **NO_PHONE_HOME, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            mlflow_server_command(root, port, workers),
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None,
        )
    proc.log_path = log_path  # type: ignore[attr-defined]
    proc.url = url  # type: ignore[attr-defined]
    if wait:
        try:
            wait_for_mlflow(url, proc, timeout)
        except BaseException:
            stop_mlflow_server(proc)
            raise
    return url, proc


def stop_mlflow_server(proc: subprocess.Popen, timeout: float = 15.0) -> list[psutil.Process]:
    """Stop the server and every process it started, by PID; return survivors (should be [])."""
    tree = process_tree([proc.pid])
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: reaches uvicorn too
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    survivors = kill_tree(tree, timeout)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)  # reap our direct child
    return survivors


@contextlib.contextmanager
def mlflow_server(tmp_dir: str | os.PathLike, **kw) -> Iterator[tuple[str, subprocess.Popen]]:
    url, proc = start_mlflow_server(tmp_dir, **kw)
    try:
        yield url, proc
    finally:
        stop_mlflow_server(proc)


def start_model_server(model_uri: str, tracking_uri: str, tmp_dir: str | os.PathLike,
                       timeout: float = 180.0) -> tuple[str, subprocess.Popen]:
    """``mlflow models serve --env-manager local`` of ``model_uri`` on 127.0.0.1:<free port>, polled on
    ``/ping`` until the model has loaded; return (``http://127.0.0.1:PORT``, Popen). Stop it with
    ``stop_mlflow_server`` (its own session, killed by PID)."""
    root = Path(tmp_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    # mlflow execs `uvicorn` by name: the interpreter's own bin dir first, activated or not
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, **NO_PHONE_HOME, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONUNBUFFERED": "1", "PATH": path}
    log_path = root / "model-server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
             "--host", LOOPBACK, "--port", str(port), "--workers", "1"],
            cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None,
        )
    proc.log_path = log_path  # type: ignore[attr-defined]
    try:
        wait_for_mlflow(url, proc, timeout, path="/ping", what="model server")
    except BaseException:
        stop_mlflow_server(proc)
        raise
    return url, proc
