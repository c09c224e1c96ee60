"""MLflow runs, tags and artifacts (the contract in docs/design.md).

One experiment per spec name, one parent run per pipeline execution, one child run per source, the
distillation and every target trial. ``MlflowClient`` with explicit run ids (not mlflow's global
active run) because Ray reuses worker processes and Tune runs several trials per process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from safetensors.torch import save_file

from .data import TaskData, text_columns
from .runtime.redaction import redact
from .spec.methods import REFERENCE, family
from .spec.schema import TaskSpec

# MLflow prints "View run ... at: <tracking URI>" whenever a run ends, credentials included; the CLI
# prints the (redacted) URI itself.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# and a progress bar per artifact download (cache reuse, reloads, the report): noise around our own lines
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# The MLflow contract (docs/design.md): every tag, tag prefix and shared artifact path the pipeline
# writes and the report, the cache and the registry read. No other module spells one out.
PARENT_TAG = "mlflow.parentRunId"
STAGE_TAG = "mpt.stage"  # source, distill or target
TASK_TAG = "mpt.task"
METHOD_TAG = "mpt.method"  # a target trial's method; a distillation's kind (distill, joint_multitask)
FINGERPRINT_TAG = "mpt.fingerprint"
PIPELINE_TAG = "mpt.pipeline_run"  # on a parent run: its run tag
SPEC_TAG = "mpt.spec"  # on a parent run: the spec file it ran
DRIVER_TAG = "mpt.driver"  # on a parent run: host:pid of the driver, to tell a dead pipeline
NODE_TAG = "mpt.node"
ERROR_TAG = "mpt.error"  # why a run failed or was stopped
STOPPED_TAG = "mpt.stopped_by_scheduler"  # a trial the scheduler ended before its step budget
BEST_TAG = "mpt.best"  # "true" on a chosen trial
CONFIG_TAG = "mpt.config"  # what a configuration's trials share across seeds
SWEEP_TAG = "mpt.sweep"
TRIAL_ID_TAG = "mpt.trial_id"
ATTEMPTS_TAG = "mpt.attempts"  # a Train job's starts, restarts counted
RESTARTED_TAG = "mpt.restarted"
REUSED_PREFIX = "mpt.reused."  # + a stage key, on a parent run: the earlier run it reused the stage from
CACHE_TARGET_PREFIX = "mpt.cache.target."  # + a target, on a parent run: the fingerprint of the rows it recorded
METRIC_TAG = "mpt.metric"  # on a registered model version, with the two values below
VALIDATION_TAG = "mpt.validation_value"
TEST_TAG = "mpt.test_value"
PREDICTIONS_ARTIFACT = "predictions/test.json"  # a chosen trial's test labels and predictions
TARGET_RESULTS = "targets"  # on a parent run: each target's trial rows (<task>.json), what a rerun reuses
REPORT_DIR = "report"  # on a parent run: the trials table, the report's tables and plots
SPEC_DIR = "spec"  # on a parent run: the spec as it ran (overrides applied)
LOGS_DIR = "logs"  # on a parent run: the driver's log file
MODEL_ARTIFACT = "model"  # on a chosen trial's run: its mlflow.pyfunc model, what the registry versions


def teacher_artifact(task: str) -> str:
    """Where a source run keeps its teacher (what a later run reuses)."""
    return f"teacher/teacher_{task}.safetensors"


def chosen_trial_artifact(method: str) -> str:
    """Where a chosen trial's run keeps its saved model files: ``best_adapter`` for MPT, else
    ``best_<family>``."""
    return "best_adapter" if method == REFERENCE else f"best_{family(method)}"


log = logging.getLogger(__name__)


class TrackingError(RuntimeError):
    """The tracking store does not answer or refuses a request."""


class StageFailed(RuntimeError):
    """A stage that failed for good, named with its task and its cause (what ``run`` reports)."""


def root_cause(err: BaseException) -> str:
    """The line of a (possibly Ray-wrapped) error that says what went wrong."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for marker in ("StageFailed: ", "Error: ", "Exception: "):
        hits = [line for line in lines if marker in line]
        if hits:
            return hits[-1].split("StageFailed: ")[-1]
    return lines[-1] if lines else type(err).__name__


@dataclass(frozen=True)
class TrackingContext:
    """What a Ray task or trial needs to log into the pipeline's run tree (picklable)."""

    uri: str
    experiment_id: str
    parent_run_id: str
    pipeline_run: str


def ensure_experiment(uri: str, name: str, artifact_root: Path | None) -> str:
    """The experiment's id, created if needed.

    For a local store the artifact location is set to an absolute path: MLflow's default is relative to
    the current directory, which is a different one inside every Ray worker.
    """
    client = MlflowClient(uri)
    try:
        existing = client.get_experiment_by_name(name)
        if existing is not None:
            return existing.experiment_id
        location = artifact_root.resolve().as_uri() if artifact_root else None
        return client.create_experiment(name, artifact_location=location)
    except Exception as err:  # MLflow raises many kinds (connection, SQL, REST); all mean the same here
        raise TrackingError(redact(f"tracking store {uri} did not answer: {err}", uri)) from err


def node_name() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address() + "/" + ray.get_runtime_context().get_node_id()[:8]
    except Exception:  # outside a Ray worker: the host name is the best we have
        pass
    return socket.gethostname()


class RunLogger:
    """Logging into one existing run; step metrics are buffered and sent in batches."""

    def __init__(self, uri: str, run_id: str):
        self.client = MlflowClient(uri)
        self.run_id = run_id
        self._buffer: list[Metric] = []

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def metric(self, step: int, name: str, value: float) -> None:
        self._buffer.append(Metric(name, float(value), int(time.time() * 1000), step))

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.metric(step, name, value)
        self.flush()

    def flush(self) -> None:
        while self._buffer:
            chunk, self._buffer = self._buffer[:500], self._buffer[500:]
            self.client.log_batch(self.run_id, metrics=chunk)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_tensors(self, name: str, tensors: dict[str, torch.Tensor], artifact_path: str | None = None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / name
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(file))
            self.log_artifact(file, artifact_path)

    def log_datasets(self, spec: TaskSpec, data: TaskData, splits: tuple[str, ...], seed: int,
                     attempts: int = 5) -> None:
        """The task's ``splits`` as the run's dataset inputs (MLflow's Datasets column).

        A dataset is one row per experiment, and the store checks for it before inserting it, so
        trials that start together race to insert the same one and all but one get a unique-key
        error; on the next attempt the row exists and only the link to the run is written. Lineage
        never fails a run: after ``attempts`` the run goes on without it, with a warning.
        """
        inputs = [dataset_input(spec, data, split, seed) for split in splits]
        for attempt in range(attempts):
            try:
                self.client.log_inputs(self.run_id, inputs)
                return
            except Exception as err:  # MLflow wraps the store's error (SQL, REST) in several types
                if attempt == attempts - 1:
                    log.warning("run %s: dataset inputs of %s not logged: %s", self.run_id, spec.name,
                                root_cause(err)[:300])
                    return
                time.sleep(0.1 * (attempt + 1) + random.random() * 0.2)

    def end(self, status: str) -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status)


DATASET_CONTEXT = "mlflow.data.context"  # the tag MLflow's UI shows beside a dataset (train, validation, test)


def dataset_input(spec: TaskSpec, data: TaskData, split: str, seed: int) -> DatasetInput:
    """One split of a task as an MLflow dataset input: name, source, split, example count, digest.

    The digest hashes the examples already in memory (one pass, nothing re-read); the source says
    where they came from: the seeded generator, a hub dataset, or local files.
    """
    examples = data.split(split)
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(json.dumps([ex.texts, ex.label]).encode())
    if spec.kind == "embedded":
        source_type, source = "code", {"generator": "orchestrator.data.synthetic", "task": spec.dataset or spec.name,
                                       "seed": seed}
    elif spec.kind == "hf":
        # no split here: under the ATTEMPT rule a role may be carved from another split (see the profile)
        source_type, source = "hugging_face", {"path": spec.dataset, "config_name": spec.config}
    else:
        source_type, source = "local", {"uri": Path(spec.dataset or "").resolve().as_uri()}
    columns = [{"type": "string", "name": c, "required": True} for c in text_columns(spec, data.is_pair)]
    schema = {"mlflow_colspec": [*columns, {"type": "string", "name": "label", "required": True}]}
    dataset = Dataset(name=spec.name, digest=digest.hexdigest()[:16], source_type=source_type,
                      source=json.dumps(source), schema=json.dumps(schema),
                      profile=json.dumps({"num_rows": len(examples), "split": split, "split_rule": spec.split_rule,
                                          "labels": data.label_names}))
    return DatasetInput(dataset, tags=[InputTag(DATASET_CONTEXT, split)])


def create_run(ctx: TrackingContext, stage: str, task: str, run_name: str, params: dict[str, Any],
               tags: dict[str, Any] | None = None) -> RunLogger:
    client = MlflowClient(ctx.uri)
    all_tags = {PARENT_TAG: ctx.parent_run_id, PIPELINE_TAG: ctx.pipeline_run, STAGE_TAG: stage, TASK_TAG: task,
                NODE_TAG: node_name(), **(tags or {})}
    run = client.create_run(ctx.experiment_id, run_name=run_name, tags={k: str(v) for k, v in all_tags.items()})
    logger = RunLogger(ctx.uri, run.info.run_id)
    logger.log_params(params)
    return logger


@contextmanager
def child_run(ctx: TrackingContext, stage: str, task: str, run_name: str, params: dict[str, Any],
              tags: dict[str, Any] | None = None) -> Iterator[RunLogger]:
    """A child run that ends FINISHED, or FAILED (with the error as a tag) if the body raises."""
    logger = create_run(ctx, stage, task, run_name, params, tags)
    try:
        yield logger
    except SystemExit as err:
        if err.code in (0, None):
            # Tune ending a trial's thread inside tune.report: the sweep's TrialRunCloser ends this run.
            raise
        logger.set_tags({ERROR_TAG: f"SystemExit: {err.code}"})
        logger.end("FAILED")
        raise
    except Exception as err:
        cause = root_cause(err)
        logger.set_tags({ERROR_TAG: cause[:4000]})
        logger.end("FAILED")
        raise StageFailed(f"stage {stage}, task {task}: {cause}") from err
    except BaseException as err:  # KeyboardInterrupt and the like: not the stage's fault
        logger.set_tags({ERROR_TAG: type(err).__name__})
        logger.end("KILLED")
        raise
    logger.end("FINISHED")


def start_parent_run(uri: str, experiment_id: str, run_name: str, params: dict[str, Any],
                     tags: dict[str, Any]) -> RunLogger:
    """The pipeline's run, tagged with the driver process so a later run can tell it died."""
    client = MlflowClient(uri)
    tags = {**tags, DRIVER_TAG: f"{socket.gethostname()}:{os.getpid()}"}
    run = client.create_run(experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()})
    logger = RunLogger(uri, run.info.run_id)
    logger.log_params(params)
    return logger


def close_orphaned_runs(uri: str, experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING pipelines whose driver process on this host is gone (killed with
    SIGKILL, say), and their RUNNING child runs; returns the parent run ids."""
    import psutil

    client = MlflowClient(uri)
    host = socket.gethostname()
    parents = client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and tags.`{DRIVER_TAG}` LIKE '{host}:%'",
                                 max_results=1000)
    closed = []
    for parent in parents:
        pid = int(parent.data.tags[DRIVER_TAG].rsplit(":", 1)[1])
        if psutil.pid_exists(pid) and pid != os.getpid():
            continue
        why = "the pipeline driver died while this run was RUNNING"
        kill_running_children(uri, experiment_id, parent.info.run_id, why)
        client.set_tag(parent.info.run_id, ERROR_TAG, why)
        client.set_terminated(parent.info.run_id, "KILLED")
        closed.append(parent.info.run_id)
    return closed


def kill_running_children(uri: str, experiment_id: str, parent_run_id: str, why: str) -> None:
    """Mark KILLED, with ``why`` as their ``mpt.error``, the child runs of a pipeline still RUNNING."""
    client = MlflowClient(uri)
    children = client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}' "
                                  "and attributes.status = 'RUNNING'", max_results=10000)
    for run in children:
        client.set_tag(run.info.run_id, ERROR_TAG, why)
        client.set_terminated(run.info.run_id, "KILLED")


def ui_command(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"open {redact(uri)} in a browser"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"

