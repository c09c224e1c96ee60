"""Pre-flight: what a run needs from the live cluster, checked before any compute.

Each check returns a list of :class:`~orchestrator.spec.schema.SpecIssue` (field, value, message, fix) and
prints nothing, so ``plan``/``run``/``validate`` can report every problem at once and exit 2:

- :func:`resource_issues`: every stage's resource request fits the cluster. A Ray Train job
  (``source``, ``distill``) asks for ``num_workers`` bundles of ``{CPU: cpus_per_worker,
  GPU: gpus_per_worker}``; each bundle must fit on one node, and the cluster must hold
  ``num_workers`` of them at once. A Tune trial (``target``) asks for one such bundle. A request
  that fits nowhere does not fail in Ray: it stays PENDING forever (the DAG waits a week for a
  worker group, ``dag.node_env``). Ray Train's controller asks for no CPU and is ignored.
- :func:`tracking_issues`: the tracking store answers (an MLflow server: one
  ``experiments/search`` call, 5 s timeout, no retries) or can be created (SQLite: its directory
  is writable). Credentials in the URI never appear in an issue.
- :func:`storage_issues`: the Ray Train/Tune ``storage_path`` is writable (a probe file is
  written and deleted; a local directory that does not exist yet is not created: its nearest
  existing ancestor is probed instead).
- :func:`multi_node_issues`: on a cluster of more than one machine, storage and tracking must be
  reachable from every node (``validate`` can ask offline with ``declared=declares_multi_node(spec)``).
- :func:`preflight`: connects to Ray (or estimates the local machine) and runs all of the above.

What counts as "more than one machine": alive nodes with different ``NodeManagerAddress`` values,
or an autoscaling cluster whose config (``~/ray_bootstrap_config.yaml`` on the head, written by
``ray up``) has a worker node type with ``max_workers > 0``. Nodes sharing one address are one
machine (Ray's own multi-node test harness, ``tests/helpers/ray_cluster.py``) and share its disk.

Storage on more than one machine: a plain path (``/data/ray_results``, ``./ray_results``) is taken
to be each node's own disk, where Ray Train (>= 2.7) would scatter checkpoints that the driver
then cannot read; that is an issue. A shared filesystem mounted at the same path on every node
(NFS, EFS) is fine, and is declared by writing it as a URI: ``file:///mnt/efs/ray_results``
(pyarrow, which Ray Train uses for storage, reads it as the same local path). ``s3://``,
``gs://`` and other URIs are assumed shared.

Autoscaling: on a ``ray up`` cluster the workers may not exist yet (the head of ``cluster.yaml``
offers ``CPU: 0``). Worker node types from the autoscaler's config count as nodes the cluster can
add, so a request that fits a node type is not an issue. The config is read from the machine the
check runs on: on the head (``ray job submit``, ``ray exec ... --address auto``) it is found; from
a laptop pass ``node_types=autoscaling_node_types("cluster.yaml")``.

The module is longer than the others (about 480 lines) on purpose: every check that can make a run
hang or fail late lives here, in one place, sharing one issue format and one view of the cluster.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..runtime.redaction import redact
from ..spec.schema import PipelineSpec, SpecIssue
from .resources import EPS, bundles_that_fit

TRACKING_TIMEOUT_S = 5.0
STORAGE_TIMEOUT_S = 20.0
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
PROBE_PREFIX = ".mpt-preflight-"
NODE_TYPES_HINT = "cluster.yaml available_node_types"


# ----------------------------------------------------------------------------- the cluster


def alive_nodes(nodes: Iterable[dict]) -> list[dict]:
    """``ray.nodes()`` entries of nodes that are alive (dead ones stay listed for a while)."""
    return [n for n in nodes if n.get("Alive", n.get("alive", True))]


def machines(nodes: Iterable[dict]) -> set[str]:
    """Distinct machine addresses among alive nodes."""
    return {str(n.get("NodeManagerAddress", "")) for n in alive_nodes(nodes)}


def autoscaling_node_types(config: dict | str | os.PathLike | None = None) -> list[dict]:
    """Worker node types an autoscaling cluster can add: ``[{"name", "resources", "max_workers"}]``.

    ``config``: a cluster config (mapping or YAML path, e.g. ``cluster.yaml``); default: the
    autoscaler's own copy on the head, ``~/ray_bootstrap_config.yaml``, when this process runs
    there; ``[]`` when there is none. ``resources`` is ``None`` when the config does not declare
    them (the autoscaler then asks the cloud): such a type is assumed to fit any request.
    """
    if config is None:
        path = Path(BOOTSTRAP_CONFIG).expanduser()
        if not path.is_file():
            return []
        config = path
    if not isinstance(config, dict):
        import yaml

        try:
            config = yaml.safe_load(Path(config).read_text()) or {}
        except (OSError, yaml.YAMLError):
            return []
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    default_max = config.get("max_workers", 2)  # Ray's default for the cluster-wide cap
    out = []
    for name, node_type in types.items():
        if name == head or not isinstance(node_type, dict):
            continue
        max_workers = int(node_type.get("max_workers", default_max) or 0)
        if max_workers > 0:
            resources = node_type.get("resources")
            out.append({"name": name, "resources": dict(resources) if resources else None,
                        "max_workers": max_workers})
    return out


def _num(x: float) -> str:
    return f"{x:g}"


def _show(bundle: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {_num(v)}" for k, v in bundle.items()) + "}"


def resource_issues(spec: PipelineSpec, nodes: list[dict], node_types: list[dict] | None = None) -> list[SpecIssue]:
    """Stages whose resource request the cluster can never grant (they would stay PENDING forever).

    ``nodes``: ``ray.nodes()`` entries (their ``Alive`` flag and total ``Resources`` are used).
    ``node_types``: worker types an autoscaler may add (:func:`autoscaling_node_types`).
    """
    offers = [dict(n.get("Resources") or {}) for n in alive_nodes(nodes)]
    types = [t for t in (node_types or []) if int(t.get("max_workers", 0)) > 0]
    if any(t.get("resources") is None for t in types):
        return []  # a node type of unknown size may fit anything: nothing can be ruled out
    potential = offers + [dict(t["resources"]) for t in types]
    stages = (("source", "source job", spec.source.resources, True),
              ("distill", "distillation job", spec.distill.resources, True),
              ("target", "target trial", spec.target.resources, False))
    issues = []
    for stage, what, res, is_train_job in stages:
        field = f"{stage}.resources"
        bundle = res.bundle()
        value = res.model_dump()
        per_worker = f"each worker of a {what}" if is_train_job else f"each {what}"
        if not any(bundles_that_fit(bundle, offer) for offer in potential):
            best = {k: max((float(o.get(k, 0.0)) for o in potential), default=0.0) for k in bundle}
            if "GPU" in bundle and best["GPU"] <= 0:
                issues.append(SpecIssue(
                    field=field, value=value,
                    message=f"{per_worker} asks for {_num(bundle['GPU'])} GPU, but no node "
                            f"{'can be added with' if types else 'has'} a GPU; it would stay PENDING forever",
                    fix=f"set {field}.gpus_per_worker: 0, or add a GPU node type ({NODE_TYPES_HINT})"))
                continue
            short = [k for k in bundle if best[k] + EPS < bundle[k]]
            lowers = (" and ".join(f"{field}.{'cpus' if k == 'CPU' else 'gpus'}_per_worker to at most {_num(best[k])}"
                                   for k in short) if short else f"{field}.cpus_per_worker or gpus_per_worker "
                      "until one node holds both")
            issues.append(SpecIssue(
                field=field, value=value,
                message=f"{per_worker} asks for {_show(bundle)} on one node, but no node "
                        f"{'(running or addable) ' if types else ''}offers that (the most any node has: "
                        f"{_show(best)}); it would stay PENDING forever",
                fix=f"lower {lowers}, or add a larger node type ({NODE_TYPES_HINT})"))
            continue
        if is_train_job and res.num_workers > 1:
            capacity = sum(bundles_that_fit(bundle, o) for o in offers) + sum(
                bundles_that_fit(bundle, t["resources"]) * int(t["max_workers"]) for t in types)
            if capacity < res.num_workers:
                issues.append(SpecIssue(
                    field=field, value=value,
                    message=f"a {what} needs {res.num_workers} workers x {_show(bundle)} at once, but the whole "
                            f"cluster{' (with every node the autoscaler may add)' if types else ''} holds only "
                            f"{capacity}; it would stay PENDING forever",
                    fix=f"lower {field}.num_workers to at most {capacity} (or cpus_per_worker), "
                        f"or add nodes ({NODE_TYPES_HINT})"))
    return issues


# ----------------------------------------------------------------------------- tracking


def tracking_issues(uri: str, timeout: float = TRACKING_TIMEOUT_S) -> list[SpecIssue]:
    """Whether the tracking store answers (HTTP), or can be written (SQLite); other schemes pass.

    An MLflow server is asked for one experiment (``POST /api/2.0/mlflow/experiments/search``) with
    MLflow's own credential handling (``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``/``_TOKEN``, TLS
    settings; user:password in the URI also works), no retries, ``timeout`` seconds.
    """
    shown = redact(uri)
    field = "tracking.uri"
    if uri.startswith(("http://", "https://")):
        return [SpecIssue(field=field, value=shown, message=redact(m, uri), fix=redact(f, uri))
                for m, f in _http_problems(uri, timeout)]
    if uri.startswith("sqlite:"):
        path = uri.split("sqlite:///", 1)[1] if uri.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            return [SpecIssue(field=field, value=shown, message="an in-memory SQLite store vanishes with the process "
                              "and is not shared with Ray workers", fix="use sqlite:////absolute/path/mlflow.db")]
        if not os.path.isabs(path):
            return [SpecIssue(field=field, value=shown,
                              message="a relative SQLite path means another file in every Ray worker "
                                      "(they run in their own working directory)",
                              fix=f"use an absolute path: sqlite:///{Path(path).resolve()}")]
        db = Path(path)
        problem = _write_probe(db.parent) if not db.exists() else (
            None if os.access(db, os.W_OK) and db.is_file() else "the database file is not a writable file")
        if problem:
            return [SpecIssue(field=field, value=shown, message=f"cannot create the SQLite store {db}: {problem}",
                              fix="choose a directory you can write, or an http(s):// MLflow server")]
    return []


def _http_problems(uri: str, timeout: float) -> list[tuple[str, str]]:
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    endpoint = "/api/2.0/mlflow/experiments/search"
    try:
        response = http_request(get_default_host_creds(uri.rstrip("/")), endpoint, "POST", max_retries=0,
                                backoff_factor=0, backoff_jitter=0, timeout=timeout, raise_on_status=False,
                                json={"max_results": 1})
    except Exception as err:  # connection refused, DNS, TLS, timeout: MLflow wraps them all
        return [(f"the MLflow server does not answer: {_http_cause(err, timeout)}",
                 "start it (docs/cluster.md step 3) or fix the host and port; from a cluster node use the "
                 "head's private IP")]
    code = response.status_code
    if code == 200:
        try:
            response.json()
        except ValueError:
            return [(f"{endpoint} answered 200 but not with JSON: this is not an MLflow tracking server",
                     "point tracking.uri at the MLflow server itself")]
        return []
    body = (response.text or "").strip().replace("\n", " ")[:200]
    if code in (401, 403):
        return [(f"the MLflow server refused the credentials (HTTP {code})",
                 "set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) "
                 "in the environment of the driver and the workers")]
    if code == 404:
        return [(f"{endpoint} is not found (HTTP 404): not an MLflow tracking server, or the URI lacks a path prefix",
                 "point tracking.uri at the MLflow server (the address `mlflow server` prints)")]
    if code == 400 and "host" in body.lower():
        return [(f"the MLflow server rejected the Host header (HTTP 400: {body})",
                 "start `mlflow server` with --allowed-hosts naming this host")]
    return [(f"the MLflow server answered HTTP {code}: {body}", "check the server's log")]


def _http_cause(err: BaseException, timeout: float) -> str:
    """A short reason from the chain of exceptions MLflow and requests wrap around each other."""
    chain: list[BaseException] = []
    e: BaseException | None = err
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(f"{type(x).__name__}: {x}" for x in chain)
    for needles, reason in (
        (("NameResolutionError", "Name or service not known", "nodename nor servname", "getaddrinfo failed"),
         "the host name does not resolve"),
        (("SSLError", "CERTIFICATE_VERIFY_FAILED"), "TLS handshake failed (see MLFLOW_TRACKING_SERVER_CERT_PATH)"),
        (("Connection refused",), "connection refused (nothing listens on that port)"),
        (("Timeout", "timed out"), f"no answer within {timeout:g} s"),
        (("NewConnectionError", "ConnectionError"), "the connection failed"),
    ):
        if any(n in text for n in needles):
            return reason
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


# ----------------------------------------------------------------------------- storage


def _write_probe(directory: Path) -> str | None:
    """Whether files can be created in ``directory``; the problem, or None. Creates nothing that stays:
    a probe file is written and deleted in ``directory`` or, when it does not exist yet, in its nearest
    existing ancestor (where Ray's ``mkdir -p`` would start), so ``plan`` leaves no empty dirs behind."""
    target = directory
    while not target.exists() and target.parent != target:
        target = target.parent
    if not target.is_dir():
        return f"{target} is not a directory"
    try:
        fd, name = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=target)
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        return f"{target} is not writable ({type(err).__name__}: {err.strerror or err})"
    return None


def _with_timeout(fn, timeout: float):
    """Run ``fn()`` in a daemon thread; its result, or TimeoutError (the thread is abandoned)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True, name="mpt-preflight-storage")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def storage_issues(storage: str, timeout: float = STORAGE_TIMEOUT_S) -> list[SpecIssue]:
    """Whether Ray Train/Tune can write ``storage`` (``spec.storage()``: an absolute path or a URI).

    A local path (or ``file://`` URI): a probe file is written and deleted in it, or in its nearest
    existing ancestor when it does not exist yet (nothing is created).
    Any other URI goes through ``pyarrow.fs.FileSystem.from_uri``, as Ray Train does, and gets a small
    probe object written and deleted (credentials come from the usual places: instance profile, env).
    """
    field = "storage_path"
    fix = "choose a directory this user can write, or a bucket URI (s3://BUCKET/ray_results)"
    local = urlsplit(storage).path if storage.startswith("file://") else storage  # as pyarrow reads it
    if "://" not in local:
        problem = _write_probe(Path(local))
        return [SpecIssue(field=field, value=redact(storage), message=f"cannot write there: {problem}", fix=fix)] if problem else []

    def probe() -> None:
        import pyarrow.fs

        fs, path = pyarrow.fs.FileSystem.from_uri(storage)
        path = path.rstrip("/")
        fs.create_dir(path, recursive=True)
        target = f"{path}/{PROBE_PREFIX}{uuid.uuid4().hex}"
        with fs.open_output_stream(target) as out:
            out.write(b"ok")
        fs.delete_file(target)

    try:
        _with_timeout(probe, timeout)
    except Exception as err:  # pyarrow raises OSError/ArrowInvalid/ArrowNotImplementedError
        cause = redact(str(err).splitlines()[0][:300], storage) if str(err) else type(err).__name__
        return [SpecIssue(field=field, value=redact(storage), message=f"cannot write a probe object there: {cause}",
                          fix="check the URI, the bucket and the credentials of the driver and every node "
                              "(docs/cluster.md step 0)")]
    return []


# ----------------------------------------------------------------------------- more than one machine


def declares_multi_node(spec: PipelineSpec) -> bool:
    """Whether the spec itself says it runs on a cluster of several machines (for ``validate``, offline):
    ``cluster.address`` is set to anything but a loopback address (``auto``, ``ray://HEAD:10001``,
    ``HEAD_IP:6379`` all count; ``127.0.0.1:6379`` and ``localhost:6379`` do not)."""
    address = (spec.cluster.address or "").strip()
    if not address:
        return False
    host = (urlsplit(address).hostname if "://" in address else address.rsplit(":", 1)[0].strip("[]")) or ""
    return not is_loopback(host)


def multi_node_issues(spec: PipelineSpec, nodes: list[dict] | None = None, node_types: list[dict] | None = None,
                      *, declared: bool = False) -> list[SpecIssue]:
    """Storage and tracking that only one machine can reach, on a cluster of several machines.

    Several machines: ``declared`` (the caller knows, e.g. from a cluster config), alive nodes at
    different addresses, or autoscaler worker types that can be added. Then a plain local
    ``storage_path`` is an issue (declare a shared mount as ``file:///mnt/...``), and so is a
    SQLite / file tracking store or an http(s) server on a loopback address.
    """
    multi = declared or len(machines(nodes or [])) > 1 or any(
        int(t.get("max_workers", 0)) > 0 for t in node_types or [])
    if not multi:
        return []
    issues = []
    storage = spec.storage()
    if "://" not in storage:
        issues.append(SpecIssue(
            field="storage_path", value=redact(storage),
            message="on a cluster of several machines a local path is each node's own disk: checkpoints "
                    "would be scattered over the nodes and the driver could not read them",
            fix="use s3://BUCKET/ray_results, or a shared mount present on every node written as a URI, "
                "e.g. file:///mnt/efs/ray_results"))
    uri = spec.tracking_uri()
    host = ""
    if uri.startswith(("http://", "https://")):
        host = urlsplit(uri).hostname or ""
    on_disk = uri.startswith(("sqlite:", "file:", "/", "./", "../", "~"))  # not `databricks` and the like
    if on_disk or (host and is_loopback(host)):
        issues.append(SpecIssue(
            field="tracking.uri", value=redact(uri),
            message="every node logs its runs there, and on a cluster of several machines this store "
                    "is reachable from one machine only",
            fix="run `mlflow server` on the head and use http://HEAD_PRIVATE_IP:5000 (docs/cluster.md)"))
    return issues


def is_loopback(host: str) -> bool:
    """``localhost``, or an address in 127.0.0.0/8 or ::1 (IPv4-mapped ones included)."""
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])  # fe80::1%eth0: the zone is not part of it
    except ValueError:  # a host name: only the machine's resolver knows, and a cluster node's may differ
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


# ----------------------------------------------------------------------------- all together


def local_node() -> dict:
    """What ``ray.init()`` with no address would offer on this machine, without starting Ray."""
    # The same guard as cli._run: Ray reads it once, at import, before any `import ray` here.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from ray._private import utils
    from ray._private.accelerators import get_accelerator_manager_for_resource

    resources = {"CPU": float(utils.get_num_cpus())}
    try:
        gpus = get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators()
    except Exception:
        gpus = 0
    if gpus:
        resources["GPU"] = float(gpus)
    return {"NodeID": "local", "Alive": True, "NodeManagerAddress": "127.0.0.1", "Resources": resources}


def cluster_nodes(address: str | None) -> list[dict]:
    """``ray.nodes()`` of the cluster at ``address``; connects (and stays connected) if needed.

    Already connected: that connection is used, whatever ``address`` says. No address and no
    ``RAY_ADDRESS``: the local machine as :func:`local_node` estimates it (nothing is started).
    """
    if address is None and "RAY_ADDRESS" not in os.environ:
        import sys

        if "ray" not in sys.modules or not sys.modules["ray"].is_initialized():
            return [local_node()]
    import ray

    if not ray.is_initialized():
        ray.init(address=address, logging_level="WARNING")
    return ray.nodes()


def preflight(spec: PipelineSpec, address: str | None = None, *, node_types: list[dict] | None = None,
              declared_multi_node: bool = False) -> list[SpecIssue]:
    """Every check above against the live cluster at ``address`` (default ``spec.cluster.address``).

    Leaves Ray connected when it had to connect (``run`` goes on to use that connection). A cluster
    that cannot be reached is one issue on ``cluster.address``; storage and tracking are still checked.
    ``node_types``: autoscaler worker types; default: :func:`autoscaling_node_types` of this machine.
    """
    address = address if address is not None else spec.cluster.address
    issues: list[SpecIssue] = []
    nodes: list[dict] | None
    try:
        nodes = cluster_nodes(address)
    except Exception as err:
        nodes = None
        shown = address or os.environ.get("RAY_ADDRESS") or ""
        cause = str(err).strip().splitlines()[-1][:300] if str(err).strip() else type(err).__name__
        issues.append(SpecIssue(
            field="cluster.address", value=redact(shown) or None,
            message=f"cannot connect to the Ray cluster: {redact(cause, shown)}",
            fix="pass the head's GCS address (HEAD_IP:6379), `auto` on a cluster node, or ray://HEAD_IP:10001; "
                "export RAY_AUTH_MODE=token when the cluster uses token auth"))
    if node_types is None:
        node_types = autoscaling_node_types()
    if nodes is not None:
        issues += resource_issues(spec, nodes, node_types)
    issues += tracking_issues(spec.tracking_uri())
    issues += storage_issues(spec.storage())
    issues += multi_node_issues(spec, nodes or [], node_types, declared=declared_multi_node)
    return issues
