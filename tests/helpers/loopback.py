"""Real processes bound to 127.0.0.1 only, for integration tests (a plain module, no fixtures).

- ``start_mlflow_server(tmp_dir)``: an ``mlflow server`` (SQLite backend, proxied artifacts)
  on a free loopback port; ``stop_mlflow_server(proc)``.
- ``start_model_server(model_uri, tracking_uri, tmp_dir)``: ``mlflow models serve --env-manager
  local`` on a free loopback port, ready when ``/ping`` answers; stopped with ``stop_mlflow_server``.
- ``start_loopback_cluster()``: a 2-node Ray cluster built with Ray's own multi-node test
  harness ``ray.cluster_utils.Cluster`` (head + a second node with the custom resource
  ``node2``), never ``ray.init``-connected in this process; ``LoopbackCluster.stop()``. With
  ``auth_token=...`` it runs with Ray's token authentication on, as ``cluster.yaml`` starts it.
- ``ray_cli(args, env)``: the ``ray`` command of this interpreter's environment, run to the end.
- ``listening_sockets(pids)`` / ``ss_listening_sockets(pids)`` / ``non_loopback(...)``: every
  listening TCP socket (and bound UDP socket) of a set of processes and their children.
- ``assert_all_loopback(procs, what)``: fail unless every listener (psutil, and ``ss`` when
  present) is on loopback; ``ListenerLog``: the same, sampled repeatedly while work runs.
- ``wait_for_job(client, job_id)``: poll a Ray job until it ends.
- ``process_tree(pids)`` / ``kill_tree(procs)`` / ``reaping(...)``: cleanup by PID, never by
  name and never with ``ray stop`` (which would kill every Ray on the machine).
- ``NO_PHONE_HOME``: environment that turns off MLflow, Hugging Face and Ray usage telemetry, for
  every process started here (nothing may send beyond loopback).

Everything started here is stopped by PID in ``finally`` blocks; use the context managers
``mlflow_server(tmp_dir)`` and ``loopback_cluster()`` to get that for free.

Why the loopback settings are belt and braces (checked with ``ss -ltnp`` on Ray 2.60):
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray pick 127.0.0.1 as the node IP, but Ray reads it
once, when ``ray._private.ray_constants`` is first imported; under pytest ``ray`` is usually
imported long before this module runs, so the variable alone is then a no-op and GCS, raylets and
agents listen on ``::``/``0.0.0.0``. Passing ``node_ip_address="127.0.0.1"`` to every node is what
reliably binds every Ray port to loopback in the harness; the variable is still exported to
the spawned processes, and ``ray_constants.ENABLE_RAY_CLUSTER`` is patched while nodes start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import psutil

# The loopback rule lives in one place: 127.0.0.0/8, ::1, IPv4-mapped ::ffff:127.x, zone ids
# stripped; wildcards (0.0.0.0, ::) are not loopback.
from orchestrator.preflight import is_loopback

LOOPBACK = "127.0.0.1"
NO_PHONE_HOME = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}


# ----------------------------------------------------------------------------- ports, sockets


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Listener:
    pid: int
    name: str
    proto: str  # "tcp" or "udp"
    ip: str
    port: int

    def __str__(self) -> str:
        return f"{self.name}[{self.pid}] {self.proto} {self.ip}:{self.port}"


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


def listening_sockets(pids: Iterable[int | psutil.Process]) -> list[Listener]:
    """Listening TCP and bound UDP sockets of ``pids`` and their descendants (via psutil)."""
    out = []
    for p in process_tree(pids):
        try:
            name = p.name()
            conns = p.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for c in conns:
            if c.type == socket.SOCK_STREAM and c.status != psutil.CONN_LISTEN:
                continue
            if c.type == socket.SOCK_DGRAM and c.raddr:
                continue  # a connected UDP socket, not a listener
            proto = "tcp" if c.type == socket.SOCK_STREAM else "udp"
            out.append(Listener(p.pid, name, proto, c.laddr.ip, c.laddr.port))
    return out


listening_ports_of = listening_sockets  # the name other notes use


def ss_listening_sockets(pids: Iterable[int | psutil.Process]) -> list[Listener]:
    """Same question answered by ``ss -ltunpH`` (an independent check of psutil's answer)."""
    wanted = {p.pid: p for p in process_tree(pids)}
    res = subprocess.run(["ss", "-ltunpH"], capture_output=True, text=True, check=True, timeout=30)
    out = []
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) < 6 or "users:" not in line:
            continue
        proto, local = parts[0], parts[4]
        ip, _, port = local.rpartition(":")
        ip = ip.strip("[]").split("%", 1)[0]
        if ip == "*":
            ip = "::"  # ss prints a dual-stack wildcard as '*'
        users = line[line.index("users:") :]
        for chunk in users.split("pid=")[1:]:
            pid = int(chunk.split(",", 1)[0])
            if pid in wanted:
                name = users.split('"')[1] if '"' in users else "?"
                out.append(Listener(pid, name, proto, ip, int(port)))
    return sorted(set(out), key=lambda l: (l.pid, l.port))


def non_loopback(listeners: Iterable[Listener]) -> list[Listener]:
    return [l for l in listeners if not is_loopback(l.ip)]


def assert_all_loopback(procs: Iterable[int | psutil.Process], what: str) -> list[Listener]:
    """Every listening socket of ``procs`` (and children) is on loopback, per psutil and per ss(8)."""
    procs = list(procs)
    listeners = listening_sockets(procs)
    assert listeners, f"{what}: found no listening sockets at all (the check would be vacuous)"
    bad = non_loopback(listeners)
    assert not bad, f"{what}: listening beyond loopback:\n" + "\n".join(map(str, bad))
    try:  # independent second opinion, when ss is installed
        ss = ss_listening_sockets(procs)
    except (FileNotFoundError, subprocess.SubprocessError):
        ss = []
    bad_ss = non_loopback(ss)
    assert not bad_ss, f"{what}: ss shows listeners beyond loopback:\n" + "\n".join(map(str, bad_ss))
    return listeners


@dataclass
class ListenerLog:
    """Listeners seen across repeated samples of a changing set of processes (workers come and go)."""

    seen: set[Listener] = field(default_factory=set)
    cmdlines: dict[int, str] = field(default_factory=dict)
    samples: int = 0

    def sample(self, procs: Iterable[int | psutil.Process]) -> None:
        """One system-wide socket scan (cheaper than one per process), kept for ``procs``' trees."""
        tree = {p.pid: p for p in process_tree(procs)}
        found = []
        for c in psutil.net_connections(kind="inet"):
            if c.pid not in tree or not c.laddr:
                continue
            if (c.type == socket.SOCK_STREAM and c.status != psutil.CONN_LISTEN) or \
                    (c.type == socket.SOCK_DGRAM and c.raddr):
                continue
            try:
                name = tree[c.pid].name()
            except psutil.Error:
                name = "?"
            found.append(Listener(c.pid, name, "tcp" if c.type == socket.SOCK_STREAM else "udp", c.laddr.ip, c.laddr.port))
        self.samples += 1
        for l in found:
            if l not in self.seen and not is_loopback(l.ip):
                with contextlib.suppress(psutil.Error):
                    self.cmdlines[l.pid] = " ".join(" ".join(psutil.Process(l.pid).cmdline()).split())[:300]
        self.seen.update(found)

    def bad(self) -> list[Listener]:
        return sorted(non_loopback(self.seen), key=lambda l: (l.pid, l.port))

    def describe(self, listeners: Iterable[Listener]) -> str:
        return "\n".join(f"{l}  ({self.cmdlines.get(l.pid, '?')})" for l in listeners)


# ----------------------------------------------------------------------------- cleanup by PID


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


# ----------------------------------------------------------------------------- MLflow server


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


# ----------------------------------------------------------------------------- Ray cluster


@dataclass
class LoopbackCluster:
    cluster: object  # ray.cluster_utils.Cluster
    dashboard_url: str  # http://127.0.0.1:PORT (job submission + dashboard)
    gcs_address: str  # 127.0.0.1:PORT
    node_ips: list[str]
    temp_root: Path  # RAY_TMPDIR of this cluster (sessions, logs, sockets)
    auth_token: str | None = field(repr=False, default=None)  # None: token authentication is off
    _env: dict[str, str] = field(repr=False, default_factory=dict)
    _roots: list[psutil.Process] = field(repr=False, default_factory=list)
    stopped: bool = False

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster: nodes' processes, their children (agents,
        dashboard modules, workers, job drivers), found by PID from the processes started."""
        roots = list(self._roots)
        for node in self.cluster.list_all_nodes():
            for infos in node.all_processes.values():
                roots += _as_procs(i.process.pid for i in infos)
        return alive(process_tree(roots))

    def client_env(self, *, with_auth: bool = True) -> dict[str, str]:
        """Environment for a separate client process (``ray.init(address=self.gcs_address)``, the ray
        CLI): this cluster's auth mode (with a token: ``RAY_AUTH_MODE=token`` and
        ``RAY_AUTH_TOKEN_PATH``, both needed, see docs/cluster.md), RAY_TMPDIR and loopback switch;
        no inherited RAY_ADDRESS / RAY_API_SERVER_ADDRESS. ``with_auth=False``: no ``RAY_AUTH_*``
        variable at all, i.e. a client that does not know about the token.
        Without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 a client rewrites 127.0.0.1 to the machine's
        routable IP before dialling the GCS."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER", "RAY_AUTH"))}
        env.update(self._env)
        if not with_auth:
            env = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
        return env

    def auth_headers(self) -> dict[str, str]:
        """HTTP headers for an in-process client of the dashboard (``JobSubmissionClient(...,
        headers=...)``, ``StateApiClient``): what Ray 2.60's own clients send in token mode
        (``Authorization: Bearer <token>``, ``ray/_private/authentication``). Passed explicitly
        because this process is not in token mode and must not stay in it (only
        :meth:`in_process_client` switches it, for a while): Ray caches the mode per process, and
        other tests' ``ray.init()`` share it. A user-given Authorization header is sent as is."""
        return {"Authorization": f"Bearer {self.auth_token}"} if self.auth_token else {}

    @contextlib.contextmanager
    def in_process_client(self) -> Iterator[None]:
        """This cluster's environment in this process, for what the harness does here: starting and
        removing nodes, ``cluster.global_state``. Ray's C++ layer caches the auth mode (RayConfig)
        and the token (AuthenticationTokenLoader) per process, and a head with token auth refuses the
        harness's own GCS client without them; so with a token both caches are re-read on entry, and
        again on exit, after the environment is restored, so that a later ``ray.init()`` in this
        process (another test) does not send this cluster's token to its own cluster."""
        if self.auth_token is None:
            with _patched_env(self._env):
                yield
            return
        from ray._raylet import AuthenticationTokenLoader, Config

        def reread() -> None:
            Config.initialize("")  # what Ray's own _enable_token_auth() does to switch a process
            AuthenticationTokenLoader.instance().reset_cache()

        try:
            with _patched_env(self._env):
                reread()
                yield
        finally:
            reread()

    def stop(self, timeout: float = 20.0) -> list[psutil.Process]:
        """Remove every node, then kill any leftover PID; return survivors (should be [])."""
        if self.stopped:
            return []
        tree = self.processes()
        try:
            with self.in_process_client():  # reset_ray_address() must look in our RAY_TMPDIR; auth
                for node in list(self.cluster.worker_nodes):
                    with contextlib.suppress(Exception):
                        self.cluster.remove_node(node, allow_graceful=True)
                if self.cluster.head_node is not None:
                    with contextlib.suppress(Exception):
                        self.cluster.remove_node(self.cluster.head_node, allow_graceful=True)
                # Not cluster.shutdown(): it also resets ray.experimental.internal_kv globally,
                # which would break a ray.init() session of another test in this process.
                from ray._common.utils import reset_ray_address
                import ray._private.services as services

                reset_ray_address()
                services.find_gcs_addresses.cache_clear()
        finally:
            survivors = kill_tree(tree + process_tree(tree), timeout)
            self.stopped = True
            shutil.rmtree(self.temp_root, ignore_errors=True)
        return survivors


def start_loopback_cluster(
    *, head_cpus: int = 1, node2_cpus: int = 1, node2_resources: dict | None = None, timeout: float = 60.0,
    auth_token: str | None = None,
) -> LoopbackCluster:
    """A 2-node Ray cluster on 127.0.0.1, not connected to this process.

    Head: ``num_cpus=head_cpus``, dashboard (and job server) on 127.0.0.1:<free port>.
    Second node: ``num_cpus=node2_cpus`` and ``node2_resources`` (default ``{"node2": 1}``).
    Auth: without ``auth_token``, RAY_AUTH_MODE=disabled for this cluster (explicit, so the result
    does not depend on whether another test's ``ray.init()`` already switched this process to token
    mode). With it, token authentication on, the way ``cluster.yaml`` starts Ray: every node runs
    with RAY_AUTH_MODE=token and the token in a file (``<temp_root>/auth_token``, named by
    RAY_AUTH_TOKEN_PATH, so the user's own ``~/.ray/auth_token`` is neither read nor written).
    Private RAY_TMPDIR, so the harness's ``ray_current_cluster`` file never replaces the one in
    /tmp/ray that other people's ``ray.init(address="auto")`` would read; the second node has its
    own temp dir under it (sessions, logs, runtime envs), as a second machine would.
    """
    import ray._private.ray_constants as ray_constants
    from ray.cluster_utils import Cluster

    temp_root = Path(tempfile.mkdtemp(prefix="rlb", dir="/tmp"))  # short: AF_UNIX path limit
    (temp_root / "ray").mkdir()
    auth = {"RAY_AUTH_MODE": "disabled"}
    if auth_token is not None:
        token_path = temp_root / "auth_token"  # in mkdtemp's 0700 dir: readable by this user only
        token_path.write_text(auth_token)
        auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    env = {
        **NO_PHONE_HOME,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_TMPDIR": str(temp_root),
        **auth,
        "RAY_USAGE_STATS_ENABLED": "0",
        # Fixed default ports (44217/44227) would collide with any other Ray on this machine.
        "AUTOSCALER_METRIC_PORT": str(free_port()),
        "DASHBOARD_METRIC_PORT": str(free_port()),
        # So `python` in a job entrypoint is this interpreter, even without an activated venv.
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    }
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    cluster = Cluster(initialize_head=False, connect=False)
    lc = LoopbackCluster(cluster, "", "", [], temp_root, auth_token=auth_token, _env=env)
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    try:
        with lc.in_process_client():
            ray_constants.ENABLE_RAY_CLUSTER = False
            try:
                head = cluster.add_node(
                    node_ip_address=LOOPBACK,
                    num_cpus=head_cpus,
                    include_dashboard=True,
                    dashboard_host=LOOPBACK,
                    dashboard_port=free_port(),
                    dashboard_agent_listen_port=free_port(),
                )
                node2 = cluster.add_node(
                    node_ip_address=LOOPBACK,
                    # Its own temp dir, as on another machine. Sharing the head's would share its
                    # session dir, where each node's runtime-env agent unpacks a job's working_dir
                    # with overwrite=True: node2 installing it would delete and re-create the head's
                    # copy under the job driver running in it (its cwd vanishes: FileNotFoundError).
                    temp_dir=str(temp_root / "n2"),
                    num_cpus=node2_cpus,
                    resources=node2_resources if node2_resources is not None else {"node2": 1},
                )
                cluster.wait_for_nodes(timeout=timeout)
            finally:
                ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        lc._roots = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        webui = head.webui_url or cluster.webui_url
        if not webui:
            raise RuntimeError("the head node started without a dashboard")
        lc.dashboard_url = webui if webui.startswith("http") else f"http://{webui}"
        lc.gcs_address = cluster.gcs_address
        lc.node_ips = [head.node_ip_address, node2.node_ip_address]
        return lc
    except BaseException:
        lc._roots = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        lc.stop()
        raise


def ray_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """``ray ARGS...`` (the CLI of this interpreter's environment, whatever PATH says) run to the end
    in ``env``; stdout and stderr captured as text."""
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    return subprocess.run([ray_bin, *args], env=env, capture_output=True, text=True, timeout=timeout)


def stop_loopback_cluster(lc: LoopbackCluster) -> list[psutil.Process]:
    return lc.stop()


@contextlib.contextmanager
def loopback_cluster(**kw) -> Iterator[LoopbackCluster]:
    lc = start_loopback_cluster(**kw)
    try:
        yield lc
    finally:
        lc.stop()


def wait_for_job(client, job_id: str, timeout: float = 240.0, poll: float = 0.5, on_poll=None):
    """Poll a Ray job until it ends; its final JobStatus. ``on_poll()`` runs between polls."""
    from ray.job_submission import JobStatus

    t0 = time.monotonic()
    while True:
        status = client.get_job_status(job_id)
        if status in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            return status
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"job {job_id} still {status} after {timeout:.0f}s:\n{client.get_job_logs(job_id)[-20000:]}")
        if on_poll is not None:
            on_poll()
        time.sleep(poll)
