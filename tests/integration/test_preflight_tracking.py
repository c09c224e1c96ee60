"""Pre-flight's tracking check against a real `mlflow server` on 127.0.0.1 (started and stopped by
PID): a server that answers passes, and credentials in the URI never appear in an issue. The checks
that need no server are tests/unit/pipeline/test_preflight.py."""

from __future__ import annotations

import pytest
from helpers.mlflow_server import mlflow_server
from helpers.specs import fields
from helpers.specs import issues_text as text

from orchestrator.pipeline import preflight as pf

SECRET = "s3cr3t-SENTINEL-pw"


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as (url, _):
        yield url


def test_tracking_server_that_answers(mlflow_url):
    assert pf.tracking_issues(mlflow_url) == []
    assert pf.tracking_issues(mlflow_url + "/") == []


def test_credentials_in_the_uri_never_leak_from_an_answering_server(mlflow_url):
    uri = mlflow_url.replace("http://", f"http://admin:{SECRET}@")
    assert pf.tracking_issues(uri) == []  # the server has no login: the request goes through
    issues = pf.tracking_issues(uri + "/not-mlflow")
    assert fields(issues) == ["tracking.uri"] and "HTTP 404" in issues[0].message
    assert SECRET not in text(issues)
