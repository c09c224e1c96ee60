"""Ray 2.60 token auth on a real `ray start --head` bound to loopback, and this package's `plan
--address` and `run --address` against it, everything stopped by PID (never `ray stop`).

The 2-node loopback cluster + MLflow server + job submission end to end is
tests/integration/test_cluster_job.py (the smoke pipeline as a real job), which covers what a trivial job here
used to check."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from helpers.processes import alive, kill_tree, process_tree
from helpers.ray_cluster import ray_cli
from helpers.sockets import assert_all_loopback, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "pipelines" / "smoke.yaml")


def _report(request, timings: dict[str, float]) -> None:
    line = " ".join(f"{k}={v:.1f}s" for k, v in timings.items())
    request.node.user_properties.append(("timings", timings))
    print(f"\n[{request.node.name}] {line}")


def test_token_auth_on_loopback_head(tmp_path, request):
    """What docs/cluster.md claims about Ray 2.60 token auth, on a real `ray start --head` started
    with RAY_AUTH_MODE=token: clients get in only with RAY_AUTH_MODE=token AND the cluster's token
    (from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token); a token on disk alone is not
    enough, for the job API (HTTP) and for the GCS (`ray status`, gRPC) alike. With both, `plan
    --address` and `run --address` run their pre-flight against this head (exit 0, and exit 2 for a
    request it cannot hold)."""
    timings: dict[str, float] = {}
    t_start = time.monotonic()
    token = secrets.token_hex(32)
    token_file = tmp_path / "auth_token"
    token_file.write_text(token)
    home_empty = tmp_path / "home_empty"  # no ~/.ray/auth_token (nor the real user's)
    home_tok = tmp_path / "home_tok"  # ~/.ray/auth_token = the cluster's token
    home_empty.mkdir()
    (home_tok / ".ray").mkdir(parents=True)
    (home_tok / ".ray" / "auth_token").write_text(token)
    raytmp = Path(tempfile.mkdtemp(prefix="rlt", dir="/tmp"))  # short: AF_UNIX path limit
    gcs_port, dash_port = free_port(), free_port()
    client_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "RAY_API_SERVER"))
    }
    client_env.update(
        HOME=str(home_empty),
        RAY_TMPDIR=str(raytmp),
        RAY_USAGE_STATS_ENABLED="0",
        # Without it a client rewrites 127.0.0.1 to the machine's routable IP before dialling the
        # GCS (services.resolve_ip_for_localhost), and a loopback-only GCS is then unreachable.
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    )
    head_env = {
        **client_env,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_file),
        "AUTOSCALER_METRIC_PORT": str(free_port()),
        "DASHBOARD_METRIC_PORT": str(free_port()),
    }
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--block",
        "--node-ip-address=127.0.0.1", f"--port={gcs_port}", "--num-cpus=1",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
        f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats",
    ]  # fmt: skip
    address = f"http://127.0.0.1:{dash_port}"
    log_path = tmp_path / "ray-start.log"
    tree: list[psutil.Process] = []
    with open(log_path, "wb") as log:
        head = subprocess.Popen(cmd, env=head_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t = time.monotonic()
        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, log_path.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{address}/api/authentication_mode", timeout=5) as r:
                    mode = json.loads(r.read())
                break
            except OSError:
                assert time.monotonic() < deadline, "dashboard never came up:\n" + log_path.read_text()[-3000:]
                time.sleep(0.5)
        timings["ray_start"] = time.monotonic() - t
        assert mode.get("authentication_mode") == "token", mode
        tree = process_tree([head.pid])
        assert_all_loopback(tree, "ray start --head")

        jobs = ["job", "list", "--address", address]
        status = ["status", "--address", f"127.0.0.1:{gcs_port}"]
        tok_mode = {"RAY_AUTH_MODE": "token"}
        cases = {  # name: (args, extra env, expected: None = success, else a text in the output)
            "no mode, no token": (jobs, {}, "Unauthorized"),
            "token on disk, no mode": (jobs, {"HOME": str(home_tok)}, "Unauthorized"),
            # 403, not 401: proves $RAY_AUTH_TOKEN is read (and wins over nothing on disk).
            "mode, wrong token": (jobs, {**tok_mode, "RAY_AUTH_TOKEN": "0" * 64}, "Forbidden"),
            "mode + RAY_AUTH_TOKEN_PATH": (jobs, {**tok_mode, "RAY_AUTH_TOKEN_PATH": str(token_file)}, None),
            "mode + ~/.ray/auth_token": (jobs, {**tok_mode, "HOME": str(home_tok)}, None),
            "gcs: token on disk, no mode": (status, {"HOME": str(home_tok)}, "InvalidAuthToken"),
            "gcs: mode + ~/.ray/auth_token": (status, {**tok_mode, "HOME": str(home_tok)}, None),
        }
        # This package's CLI against the same head, as docs/cluster.md step 5a runs it: `plan --address`
        # passes the pre-flight, and `run --address` refuses a worker no node of this 1-CPU head holds
        # (this machine's own CPUs would say another number) before it creates anything.
        gcs = f"127.0.0.1:{gcs_port}"
        store = ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--set", f"storage_path={tmp_path}/ray_results"]
        orchestrator = {  # name: (args, exit code, texts in the output)
            "plan --address": (["plan", SMOKE, "--address", gcs, *store], 0,
                               [f"pre-flight against {gcs}: every stage fits"]),
            "run --address, too big": (["run", SMOKE, "--address", gcs, *store, "--set",
                                        "source.resources.cpus_per_worker=64"], 2,
                                       ["source.resources", "the most any node has: {CPU: 1}"]),
        }
        orchestrator_env = {**client_env, **tok_mode, "HOME": str(home_tok),
                            "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}

        def orchestrator_cli(args: list[str]) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=orchestrator_env, cwd=tmp_path,
                                  capture_output=True, text=True, timeout=300)

        t = time.monotonic()
        with ThreadPoolExecutor(max_workers=4) as pool:  # each CLI call is mostly `import ray`
            ours = {name: pool.submit(orchestrator_cli, c[0]) for name, c in orchestrator.items()}
            results = dict(
                zip(cases, pool.map(lambda c: ray_cli(c[0], {**client_env, **c[1]}), cases.values()))
            )
            ours = {name: future.result() for name, future in ours.items()}
        timings["clients"] = time.monotonic() - t
        problems = []
        for name, (_, _, expected) in cases.items():
            r = results[name]
            out = r.stdout + r.stderr
            if expected is None and r.returncode != 0:
                problems.append(f"{name}: expected success, rc={r.returncode}\n{out[-1500:]}")
            if expected is not None and (r.returncode == 0 or expected not in out):
                problems.append(f"{name}: expected failure with {expected!r}, rc={r.returncode}\n{out[-1500:]}")
        for name, (_, code, texts) in orchestrator.items():
            r = ours[name]
            out = r.stdout + r.stderr
            if r.returncode != code or not all(text in out for text in texts):
                problems.append(f"{name}: expected exit {code} with {texts}, rc={r.returncode}\n{out[-1500:]}")
        assert not problems, "\n\n".join(problems)
        assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()
        tree = process_tree(tree + [head.pid])
    finally:
        t = time.monotonic()
        tree = process_tree(tree + [head.pid])
        head.terminate()  # `ray start --block` stops its own processes on SIGTERM ...
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=30)
        survivors = kill_tree(tree)  # ... and anything left is killed by PID
        shutil.rmtree(raytmp, ignore_errors=True)
        timings["stop"] = time.monotonic() - t
        timings["total"] = time.monotonic() - t_start
        _report(request, timings)
    assert not survivors, [p.pid for p in survivors]
    assert head.poll() is not None
    assert not alive(tree)
