"""The repository's shipped specs, and readable views of a list of SpecIssues, for tests."""

from __future__ import annotations

from pathlib import Path

from orchestrator.spec.schema import SpecIssue

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = sorted((ROOT / "pipelines").glob("*.yaml"))
SMOKE = ROOT / "pipelines" / "smoke.yaml"


def fields(issues: list[SpecIssue]) -> list[str]:
    """The field each issue names, in order."""
    return [i.field for i in issues]


def issues_text(issues: list[SpecIssue]) -> str:
    """Every issue as printed and as JSON (what a secret must not appear in)."""
    return "\n".join(f"{i}\n{i.model_dump_json()}" for i in issues)
