"""Pre-flight's tracking check against a real `mlflow server` on 127.0.0.1 (started and stopped by
PID): a server that answers passes, and credentials in the URI never appear in an issue, nor in
anything a pipeline tracked there prints, logs or stores when a stage fails mid-run. The checks that
need no server are tests/unit/pipeline/test_preflight.py."""

from __future__ import annotations

import pytest
from helpers.mlflow_server import mlflow_server
from helpers.pipeline import run_cli
from helpers.secrets import leaks, run_texts, sentinels
from helpers.specs import SMOKE, fields
from helpers.specs import issues_text as text
from mlflow.tracking import MlflowClient

from orchestrator.cli import EXIT_FAILED
from orchestrator.pipeline import preflight as pf
from orchestrator.tracking import STAGE_TAG

SECRET = "s3cr3t-SENTINEL-pw"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as (url, proc):
        yield url, proc


@pytest.fixture(scope="module")
def mlflow_url(server):
    return server[0]


def test_tracking_server_that_answers(mlflow_url):
    assert pf.tracking_issues(mlflow_url) == []
    assert pf.tracking_issues(mlflow_url + "/") == []


def test_credentials_in_the_uri_never_leak_from_an_answering_server(mlflow_url):
    uri = mlflow_url.replace("http://", f"http://admin:{SECRET}@")
    assert pf.tracking_issues(uri) == []  # the server has no login: the request goes through
    issues = pf.tracking_issues(uri + "/not-mlflow")
    assert fields(issues) == ["tracking.uri"] and "HTTP 404" in issues[0].message
    assert SECRET not in text(issues)


@pytest.mark.slow
def test_a_stage_failing_mid_run_leaks_no_credential_of_the_tracking_uri(server, local_ray, tmp_path, capsys):
    """A pipeline tracked at the server through a URI with a password (the server has no login and
    ignores it), whose distillation diverges after the sources trained: exit 1, and the password is
    in nothing it printed, in no param, tag, metric name or artifact, nor in the server's log."""
    url, proc = server
    password, _ = sentinels()
    rc, out = run_cli(tmp_path, ["run", str(SMOKE), "--tracking-uri", url.replace("http://", f"http://mpt:{password}@"),
                                 "--set", "distill.lr=1e30"])
    err = capsys.readouterr().err
    assert rc == EXIT_FAILED and "stage distill, task sentiment+nli: " in err and "diverged" in err, out + err
    client = MlflowClient(url)
    runs = client.search_runs([client.get_experiment_by_name("mpt-smoke").experiment_id], max_results=1000)
    stages = sorted((r.data.tags.get(STAGE_TAG, "parent"), r.info.status) for r in runs)
    assert [s for s in stages if s[0] != "target"] == \
        [("distill", "FAILED"), ("parent", "FAILED"), ("source", "FINISHED"), ("source", "FINISHED")], stages
    texts = {"stdout": out, "stderr": err, "server log": proc.log_path.read_text(errors="replace"),
             **run_texts(client, runs, tmp_path / "artifacts")}
    assert any(name.endswith("tag mpt.error") for name in texts)
    assert leaks((password,), texts) == []
