"""The ``predict`` verb: an MPT model of this project over CSV, JSONL or Parquet rows, as a Ray Data
job (``map_batches`` over an autoscaling pool of actors, each loading the model once), written to
one output file with the inputs and the predictions.

Everything that can be checked without compute is checked first, all at once: the model URI (the
registered model, its alias or version, that it is one of ours), the input files (format, empty
files, the model's text columns) and the output path. Any problem is a ``SpecError`` (exit 2), and
Ray is not started.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..runtime.logs import in_ray_worker
from ..runtime.redaction import redact
from ..spec.schema import SpecError, SpecIssue, absent_local_store, local_tracking_uri
from .pyfunc import PREDICTION, ModelCard, card_of_metadata, download, model_source

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
PROGRESS_EVERY_S = 10.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictJob:
    """A checked request: the model pinned to one version, the input files and where the output goes."""

    model_uri: str  # models:/NAME/VERSION when given by alias, so every worker loads the same version
    tracking_uri: str
    card: ModelCard
    files: list[str]
    fmt: str
    out: Path
    batch_size: int
    workers: int | None
    cpus_per_worker: float
    gpus_per_worker: float
    probabilities: bool


def default_tracking_uri() -> str:
    """What ``run`` used by default: ``MLFLOW_TRACKING_URI``, else mlflow.db in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri()


def _model_issue(model_uri: str, message: str, fix: str) -> SpecIssue:
    return SpecIssue(field="MODEL_URI", value=model_uri, message=message, fix=fix)


def resolve_model(model_uri: str, tracking_uri: str) -> tuple[str, ModelCard | None, list[SpecIssue]]:
    """The URI pinned to a version, the model's card, and what is wrong (an unknown name, alias or
    version; a model that is not one of ours)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    absent = absent_local_store(tracking_uri)
    if absent:
        return model_uri, None, [absent]
    uri = model_uri
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    name = model_uri.removeprefix("models:/").split("@")[0].split("/")[0] if model_uri.startswith("models:/") else ""
    try:
        if name:
            try:
                registered = client.get_registered_model(name)
            except MlflowException:
                known = sorted(m.name for m in client.search_registered_models(max_results=20))
                return model_uri, None, [_model_issue(model_uri, f"no registered model named {name!r} in "
                                                      f"{redact(tracking_uri)}",
                                                      f"use one of {known}, or check --tracking-uri")]
        if name and "@" in model_uri:
            alias = model_uri.split("@", 1)[1]
            if alias not in registered.aliases:
                return model_uri, None, [_model_issue(model_uri, f"model {name!r} has no alias {alias!r}",
                                                      f"use one of its aliases {sorted(registered.aliases)} or a "
                                                      f"version, models:/{name}/<version>")]
            uri = f"models:/{name}/{registered.aliases[alias]}"
        with tempfile.TemporaryDirectory() as tmp:
            mlmodel = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{model_source(uri, tracking_uri).rstrip('/')}/MLmodel", dst_path=tmp,
                tracking_uri=tracking_uri)
            metadata = mlflow.models.Model.load(mlmodel).metadata
    except MlflowException as err:
        text = redact(str(err).splitlines()[0], tracking_uri)
        fix = ("check the name in the MLflow UI (Models) and --tracking-uri" if name else
               "use models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model or a model directory")
        return model_uri, None, [_model_issue(model_uri, f"cannot be loaded from {redact(tracking_uri)}: {text}", fix)]
    card = card_of_metadata(metadata)
    if card is None:
        return uri, None, [_model_issue(model_uri, "is not an MPT model of this project (its MLmodel has no "
                                                   "mpt_orchestrator metadata)",
                                        "pass a model that `python -m orchestrator run` registered, "
                                        "e.g. models:/<experiment>-<task>@champion")]
    return uri, card, []


def _head(file: Path, fmt: str) -> tuple[list[str] | None, bool]:
    """The file's columns and whether it has at least one row, reading no more than its first row."""
    if fmt == "csv":
        try:
            frame = pd.read_csv(file, nrows=1, dtype=str)
        except pd.errors.EmptyDataError:
            return None, False
        return list(frame.columns), len(frame) > 0
    if fmt == "jsonl":
        with open(file, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    return (list(record) if isinstance(record, dict) else []), True
        return None, False
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(file)
    return meta.schema_arrow.names, meta.metadata.num_rows > 0


def input_files(path: Path) -> tuple[list[Path], str | None, list[SpecIssue]]:
    """The files of ``--input`` (one file, or every CSV/JSONL/Parquet file of a directory) and their format."""
    fix = f"give a file or a directory of {', '.join(FORMATS)} files"
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FORMATS)
        if not files:
            return [], None, [SpecIssue(field="--input", value=str(path), message="directory holds no input files",
                                        fix=fix)]
    elif path.is_file():
        files = [path]
    else:
        return [], None, [SpecIssue(field="--input", value=str(path), message="no such file or directory", fix=fix)]
    fmts = sorted({p.suffix.lower() for p in files})
    if len(fmts) > 1 or fmts[0] not in FORMATS:
        return [], None, [SpecIssue(field="--input", value=str(path), message=f"format(s) {fmts} cannot be read",
                                    fix=f"{fix}, all of one format")]
    return files, FORMATS[fmts[0]], []


def check_columns(files: list[Path], fmt: str, card: ModelCard) -> list[SpecIssue]:
    """Each file has rows and the model's text columns (the first row of each file is read)."""
    issues = []
    for file in files:
        try:
            columns, has_rows = _head(file, fmt)
        except Exception as err:  # a corrupt file is bad input, whatever the reader raises
            issues.append(SpecIssue(field="--input", value=str(file), message=f"cannot be read as {fmt}: {err}",
                                    fix=f"give a valid {fmt} file"))
            continue
        if not has_rows:
            issues.append(SpecIssue(field="--input", value=str(file), message="is empty (no rows)",
                                    fix="remove it or add rows"))
            continue
        missing = [c for c in card.text_columns if c not in columns]
        if missing:
            issues.append(SpecIssue(field="--input", value=str(file),
                                    message=f"has no column {', '.join(map(repr, missing))} (it has {columns})",
                                    fix=f"the {card.task} model reads the column(s) {card.text_columns}; "
                                        "rename yours to match"))
    return issues


def check_out(out: Path, inputs: list[Path]) -> list[SpecIssue]:
    if out.suffix.lower() not in FORMATS:
        return [SpecIssue(field="--out", value=str(out), message="unknown output format",
                          fix=f"end the file name with one of {', '.join(FORMATS)}")]
    if not out.parent.is_dir():
        return [SpecIssue(field="--out", value=str(out), message="its directory does not exist",
                          fix="create it first")]
    if out.resolve() in {p.resolve() for p in inputs}:
        return [SpecIssue(field="--out", value=str(out), message="is also an input file", fix="write elsewhere")]
    return []


def plan_job(model_uri: str, input_path: str, out: str, tracking_uri: str | None = None, batch_size: int = 256,
             workers: int | None = None, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
             probabilities: bool = False) -> PredictJob:
    """Every check that needs no compute, all problems at once (``SpecError``), or the job to run."""
    tracking_uri = tracking_uri or default_tracking_uri()
    uri, card, issues = resolve_model(model_uri, tracking_uri)
    files, fmt, input_issues = input_files(Path(input_path))
    issues += input_issues
    if card is not None and fmt is not None:
        issues += check_columns(files, fmt, card)
    issues += check_out(Path(out), files)
    for field, value, low in (("--batch-size", batch_size, 1), ("--workers", workers or 1, 1)):
        if value < low:
            issues.append(SpecIssue(field=field, value=value, message="must be at least 1", fix="use 1 or more"))
    if cpus_per_worker <= 0 or gpus_per_worker < 0:
        issues.append(SpecIssue(field="--cpus-per-worker", value=cpus_per_worker,
                                message="CPUs must be > 0 and GPUs >= 0", fix="e.g. --cpus-per-worker 1"))
    if probabilities and card is not None and card.task_type != "SEQ_CLS":
        issues.append(SpecIssue(field="--probabilities", value=True, message="a text-to-text model has no class "
                                "probabilities", fix="drop --probabilities"))
    if issues:
        raise SpecError(issues, "predict")
    return PredictJob(uri, tracking_uri, card, [str(f) for f in files], fmt, Path(out), batch_size, workers,
                      cpus_per_worker, gpus_per_worker, probabilities)


class BatchPredictor:
    """One Ray Data actor: loads the model once, then predicts batch after batch."""

    @in_ray_worker
    def __init__(self, model_uri: str, tracking_uri: str, columns: list[str], probabilities: bool):
        import mlflow

        self.model = mlflow.pyfunc.load_model(download(model_uri, tracking_uri))
        self.columns = columns
        self.params = {"probabilities": probabilities}

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        # a file's text column may be typed as numbers, or hold gaps: the model's signature wants strings
        texts = pd.DataFrame({c: batch[c].fillna("").astype(str) for c in self.columns})
        out = self.model.predict(texts, params=self.params).reset_index(drop=True)
        return pd.concat([batch.drop(columns=[c for c in out.columns if c in batch]).reset_index(drop=True), out],
                         axis=1)


def _read(job: PredictJob):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import ray.data

    if job.fmt == "csv":
        # text stays text: "007" is not a number and "NA" is not a missing value
        options = pacsv.ConvertOptions(column_types={c: pa.string() for c in job.card.text_columns},
                                       strings_can_be_null=False)
        return ray.data.read_csv(job.files, convert_options=options)
    if job.fmt == "jsonl":
        return ray.data.read_json(job.files, lines=True)
    return ray.data.read_parquet(job.files)


class _Writer:
    """Batches appended to one file of the output's format, written beside it and renamed at the end
    (an interrupted job leaves no half-written output under its name)."""

    def __init__(self, out: Path):
        self.out, self.fmt = out, FORMATS[out.suffix.lower()]
        self.tmp = out.with_name(out.name + ".partial")
        self.file = None if self.fmt == "parquet" else open(self.tmp, "w", encoding="utf-8", newline="")
        self.parquet = None
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        if self.fmt == "csv":
            frame.to_csv(self.file, header=self.rows == 0, index=False)
        elif self.fmt == "jsonl":
            text = frame.to_json(orient="records", lines=True, force_ascii=False)
            self.file.write(text if text.endswith("\n") else text + "\n")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self.parquet is None:
                self.parquet = pq.ParquetWriter(self.tmp, table.schema)
            self.parquet.write_table(table.cast(self.parquet.schema))
        self.rows += len(frame)

    def close(self, ok: bool) -> None:
        for handle in (self.file, self.parquet):
            if handle is not None:
                handle.close()
        if ok:
            os.replace(self.tmp, self.out)
        else:
            self.tmp.unlink(missing_ok=True)


def worker_count(job: PredictJob) -> int:
    """``--workers``, or as many actors as the cluster's CPUs (GPUs when asked for) hold."""
    import ray

    if job.workers:
        return job.workers
    resource, per = ("GPU", job.gpus_per_worker) if job.gpus_per_worker else ("CPU", job.cpus_per_worker)
    return max(1, int(ray.cluster_resources().get(resource, 0) // per))


def run_job(job: PredictJob) -> int:
    """Run the checked job on the connected Ray; returns the number of rows written."""
    import ray
    import ray.data

    if job.gpus_per_worker and ray.cluster_resources().get("GPU", 0) < job.gpus_per_worker:
        raise SpecError([SpecIssue(field="--gpus-per-worker", value=job.gpus_per_worker,
                                   message=f"the cluster has {ray.cluster_resources().get('GPU', 0):g} GPU(s)",
                                   fix="drop --gpus-per-worker, or run against a cluster with GPUs (--address)")],
                        "predict")
    started = time.time()
    size = worker_count(job)
    log.info("[predict] %s (%s %s, %s) over %d %s file(s), up to %d worker(s) of %g CPU%s", job.model_uri,
             job.card.task, job.card.method, job.card.task_type, len(job.files), job.fmt, size, job.cpus_per_worker,
             f" + {job.gpus_per_worker:g} GPU" if job.gpus_per_worker else "")
    data = _read(job)
    data.context.execution_options.preserve_order = True  # output rows in input order
    predicted = data.map_batches(
        BatchPredictor, fn_constructor_kwargs={"model_uri": job.model_uri, "tracking_uri": job.tracking_uri,
                                               "columns": job.card.text_columns, "probabilities": job.probabilities},
        batch_size=job.batch_size, batch_format="pandas", compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size),
        num_cpus=job.cpus_per_worker, num_gpus=job.gpus_per_worker or None)
    writer, ok, last = _Writer(job.out), False, time.time()
    try:
        for frame in predicted.iter_batches(batch_format="pandas", batch_size=None):
            writer.write(frame)
            if time.time() - last > PROGRESS_EVERY_S:
                log.info("[predict] %d rows predicted (%.0f rows/s)", writer.rows, writer.rows / (time.time() - started))
                last = time.time()
        ok = True
    finally:
        writer.close(ok)
    log.info("[predict] %d rows -> %s (column %r) in %.0fs", writer.rows, job.out, PREDICTION, time.time() - started)
    return writer.rows
