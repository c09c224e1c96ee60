"""Credentials hidden wherever a URI or an error quoting it is shown (orchestrator/runtime/redaction.py):
the userinfo (``user:password@``) and its parts anywhere in the text, query-string values (tokens, a
presigned URL's signature); a URI without secrets is left as it is."""

from __future__ import annotations

import pytest

from orchestrator.runtime.redaction import redact

SECRET = "s3cr3t-SENTINEL-pw"


def test_redact_a_uri_with_userinfo():
    assert redact("http://user:pass@host:5000/x") == "http://***@host:5000/x"


def test_redact_finds_the_password_alone_in_a_text():
    uri = "https://bob:s3cr3t-pw@mlflow.example:443"
    text = f"could not reach {uri}/api/2.0 (the server said: bad password s3cr3t-pw for user bob)"
    out = redact(text, uri)
    assert "s3cr3t-pw" not in out and "bob" not in out
    assert out.startswith("could not reach https://***@mlflow.example:443/api/2.0")


def test_redact_query_string_values():
    uri = "s3://bucket/p?X-Amz-Signature=abcdef&token=secret123"
    out = redact(uri)
    assert "abcdef" not in out and "secret123" not in out
    assert out == "s3://bucket/p?X-Amz-Signature=***&token=***"
    assert "secret123" not in redact(f"upload to {uri} failed: token secret123 expired", uri)


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000/api/2.0/mlflow", "sqlite:////tmp/mlflow.db", "databricks",
                                 "s3://bucket/ray_results", "file:///mnt/efs/ray_results"])
def test_a_uri_without_secrets_is_unchanged(uri):
    assert redact(uri) == uri
    assert redact(f"failed: {uri}", uri) == f"failed: {uri}"


def test_redact_leaves_short_userinfo_parts_alone_elsewhere_in_the_text():
    # a one-letter user or password would otherwise mask every such letter of the message
    assert redact("http://u:p@host:5000/api/path") == "http://***@host:5000/api/path"


def test_redact_removes_userinfo_anywhere():
    uri = f"https://bob:{SECRET}@mlflow.example:443"
    assert SECRET not in redact(f"failed: {uri}/api and {SECRET}", uri)
