"""A 2-node Ray cluster on 127.0.0.1 for integration tests, and the ways to talk to it (a plain
module, no fixtures).

- ``start_loopback_cluster()``: a 2-node Ray cluster built with Ray's own multi-node test
  harness ``ray.cluster_utils.Cluster`` (head + a second node with the custom resource
  ``node2``), never ``ray.init``-connected in this process; ``LoopbackCluster.stop()`` (or
  ``stop_loopback_cluster``) stops it by PID. With ``auth_token=...`` it runs with Ray's token
  authentication on, as ``cluster.yaml`` starts it. The context manager ``loopback_cluster()``
  stops it in a ``finally`` block.
- ``ray_cli(args, env)``: the ``ray`` command of this interpreter's environment, run to the end.
- ``wait_for_job(client, job_id)``: poll a Ray job until it ends.

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
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import psutil

from .processes import NO_PHONE_HOME, _as_procs, _patched_env, alive, kill_tree, process_tree
from .sockets import LOOPBACK, free_port


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
