"""Which pipeline runs a report reads: an experiment's finished parent runs, and the checks on the
ones a user names, each wrong argument reported with its fix before anything is read or written."""

from __future__ import annotations

from mlflow.entities import Experiment, Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ..runtime.redaction import redact
from ..spec.schema import SpecError, SpecIssue, absent_local_store
from ..tracking import PARENT_TAG, PIPELINE_TAG, STAGE_TAG


def finished_parents(client: MlflowClient, experiment_id: str) -> list[Run]:
    """The experiment's finished pipeline runs, newest first."""
    runs = search_all(client, experiment_id, f"tags.`{PIPELINE_TAG}` LIKE '%' AND attributes.status = 'FINISHED'")
    return sorted((r for r in runs if PARENT_TAG not in r.data.tags), key=lambda r: r.info.start_time, reverse=True)


def select_parent_runs(tracking_uri: str, experiment: str, run_ids: list[str]) -> tuple[MlflowClient, str, list[str]]:
    """The client, the experiment's id and the parent runs to report: ``run_ids``, else the latest
    finished one. Raises ``SpecError`` naming every argument that is wrong, and reads nothing else."""
    absent = absent_local_store(tracking_uri)
    if absent:
        raise SpecError([absent], "report")
    client = MlflowClient(tracking_uri)
    try:
        found = client.get_experiment_by_name(experiment)
    except MlflowException as err:
        raise SpecError([SpecIssue(field="--tracking-uri", value=redact(tracking_uri), fix="start the server or fix the URI",
                                   message=redact(f"the store did not answer: {err}", tracking_uri))], "report") from None
    if found is None:
        known = ", ".join(e.name for e in client.search_experiments(max_results=20)) or "none"
        raise SpecError([SpecIssue(field="EXPERIMENT", value=experiment, message=f"no such experiment (known: {known})",
                                   fix="pass the experiment the pipeline ran in (tracking.experiment, default the spec name)")],
                        "report")
    if not run_ids:
        latest = finished_parents(client, found.experiment_id)[:1]
        if not latest:
            raise SpecError([SpecIssue(field="EXPERIMENT", value=experiment, message="has no finished pipeline run",
                                       fix="run `python -m orchestrator run SPEC` to the end, or choose another")], "report")
        return client, found.experiment_id, [latest[0].info.run_id]
    issues = [i for i in (_parent_run_issue(client, found, r) for r in run_ids) if i]
    if issues:
        raise SpecError(issues, "report")
    return client, found.experiment_id, list(dict.fromkeys(run_ids))


def _parent_run_issue(client: MlflowClient, experiment: Experiment, run_id: str) -> SpecIssue | None:
    def issue(message: str, fix: str) -> SpecIssue:
        return SpecIssue(field="--runs", value=run_id, message=message, fix=fix)

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return issue("no such run", "pass the id of a pipeline (parent) run, as `run` prints it")
    if run.info.experiment_id != experiment.experiment_id:
        return issue(f"belongs to another experiment (id {run.info.experiment_id}), not {experiment.name!r}",
                     "pass that experiment's name, or a run of this one")
    if PARENT_TAG in run.data.tags or PIPELINE_TAG not in run.data.tags:
        stage = run.data.tags.get(STAGE_TAG, "unknown")
        return issue(f"is not a pipeline run (stage {stage}, parent {run.data.tags.get(PARENT_TAG, 'none')})",
                     "pass its parent run's id")
    if run.info.status != "FINISHED":
        return issue(f"is {run.info.status}, not FINISHED", "report a finished pipeline run")
    return None


def search_all(client: MlflowClient, experiment_id: str, query: str) -> list[Run]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], query, max_results=1000, page_token=token)
        runs += page
        token = page.token
        if not token:
            return runs
