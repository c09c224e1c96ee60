"""Fake credentials, and the scan that looks for them in what a run leaves: its MLflow runs' params,
tags, metric names and artifact files, and any other text (terminal output, logs, messages)."""

from __future__ import annotations

import uuid
from pathlib import Path

# Fake secrets for the environment of the driver and (through Ray, when set before it starts) every
# worker, under the names the libraries read them from.
ENV_SECRETS = {"HF_TOKEN": "hf_SENTINEL0secret0token", "MLFLOW_TRACKING_PASSWORD": "SENTINEL-mlflow-password",
               "AWS_SECRET_ACCESS_KEY": "SENTINEL/aws/secret/key"}


def sentinels() -> tuple[str, str]:
    """A password and a token, fresh per test so that no stale file can hold them. Made of
    URL-unreserved characters only: quoting or encoding a URI leaves them intact, so a leak in any
    such form is still found. Every longer form (``mpt-user:PASSWORD``, ``token=TOKEN``, the whole
    URIs) contains one of the two, so the scans look for these two strings."""
    return f"SENTINEL-pw-{uuid.uuid4().hex[:12]}", f"SENTINEL-tok-{uuid.uuid4().hex[:12]}"


def run_texts(client, runs, dest: Path) -> dict[str, str]:
    """Every param and tag (key and value), the metric names and every artifact file of ``runs``,
    by where each comes from (artifacts are downloaded under ``dest``)."""
    texts = {}
    for run in runs:
        rid = run.info.run_id
        texts.update({f"{rid} param {k}": f"{k}={v}" for k, v in run.data.params.items()})
        texts.update({f"{rid} tag {k}": f"{k}={v}" for k, v in run.data.tags.items()})
        texts[f"{rid} metric names"] = " ".join(run.data.metrics)
        local = Path(client.download_artifacts(rid, "", str(dest / rid)))
        texts.update({f"{rid} artifact {p.relative_to(local)}": p.read_bytes().decode("latin-1")
                      for p in local.rglob("*") if p.is_file()})
    return texts


def leaks(secrets, texts: dict[str, str]) -> list[str]:
    """Every line of ``texts`` (name -> text) that holds a secret, as ``name: line``, each distinct line
    once per text: the failure message shows every place a leak comes from, not just the first."""
    hits: dict[str, None] = {}
    for name, text in texts.items():
        if any(secret in text for secret in secrets):
            for line in text.splitlines():
                if any(secret in line for secret in secrets):
                    hits[f"{name}: {line.strip()[:400]}"] = None
    return list(hits)
