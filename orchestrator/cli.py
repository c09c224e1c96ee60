"""The verbs: ``run``, ``validate``, ``plan``, ``predict``, ``report``.

``run`` checks everything it can before any compute (spec, model path, task data, tracking store),
then executes the Ray graph and prints the results table and the command that opens the MLflow UI.
``predict`` runs a registered model over files as a Ray Data job (``serve/predict.py``).
``report`` reads finished pipeline runs back from MLflow and says which differences are more than
noise (``results/report.py``).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from .runtime.logs import configure as configure_logging
from .runtime.redaction import redact
from .spec.loading import load_spec
from .spec.methods import METHODS, REFERENCE, upstream
from .spec.schema import PipelineSpec, SpecError, SpecIssue

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orchestrator",
                                     description="Multitask Prompt Tuning on Ray, tracked in MLflow.")
    verbs = parser.add_subparsers(dest="verb", required=True)
    for verb, help_text in (("run", "run the pipeline"), ("validate", "check a spec and its inputs, list every problem"),
                            ("plan", "print stages, jobs, trials and resources without training")):
        p = verbs.add_parser(verb, help=help_text)
        p.add_argument("spec", help="pipeline spec (YAML), e.g. pipelines/demo.yaml")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a spec value (repeatable), e.g. --set target.steps=100")
        p.add_argument("--tracking-uri", help="MLflow tracking URI (overrides tracking.uri)")
        p.add_argument("--address", help="Ray cluster address (overrides cluster.address); default: a local Ray")
        if verb == "run":
            p.add_argument("--rerun", action="append", default=[], choices=["source", "distill", "target"],
                           help="run this stage and every later one again even if the cache holds them")
            p.add_argument("--no-cache", action="store_true", help="reuse nothing from earlier runs")
            p.add_argument("--verbose", action="store_true",
                           help="also show Ray's, Tune's and the libraries' own output (always kept in the run's "
                                "log file) instead of the live progress display")
        if verb == "validate":
            p.add_argument("--hub-data", action="store_true",
                           help="also download and check hub datasets (otherwise validate runs offline)")
    p = verbs.add_parser("predict", help="label CSV/JSONL/Parquet rows with a registered model, on Ray Data")
    p.add_argument("model_uri", metavar="MODEL_URI",
                   help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model or a model directory, "
                        "e.g. models:/mpt-demo-review_polarity@champion")
    p.add_argument("--input", required=True, help="a .csv, .jsonl or .parquet file, or a directory of them, "
                                                  "with the model's text column(s)")
    p.add_argument("--out", required=True, help="output file (.csv, .jsonl or .parquet): the input rows plus "
                                                "`prediction` (and prob_<label> with --probabilities)")
    p.add_argument("--tracking-uri", help="MLflow store holding the model (default: $MLFLOW_TRACKING_URI, "
                                          "else ./mlflow.db)")
    p.add_argument("--address", help="Ray cluster address; default: $RAY_ADDRESS (set inside `ray job submit`), "
                                     "else a local Ray")
    p.add_argument("--batch-size", type=int, default=256, help="rows per model call (default 256)")
    p.add_argument("--workers", type=int, help="model replicas (Ray actors); default: as many as the cluster's "
                                               "CPUs (or GPUs) hold, started as the data needs them")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each replica reserves (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs each replica reserves (default 0)")
    p.add_argument("--probabilities", action="store_true", help="add prob_<label> columns (classification only)")
    p = verbs.add_parser("report", help="per-method intervals over seeds, MPT's verdicts against each method and "
                                        "their replication across runs, from MLflow")
    p.add_argument("experiment", metavar="EXPERIMENT", help="MLflow experiment (tracking.experiment, default the spec name)")
    p.add_argument("--runs", nargs="+", default=[], metavar="RUN_ID",
                   help="parent (pipeline) run ids to report and compare; default: the latest finished one")
    p.add_argument("--tracking-uri", help="MLflow store (default: ./mlflow.db, as `run` uses)")
    p.add_argument("--out", help="output directory (default: ./report-<EXPERIMENT>)")
    return parser


def load(args: argparse.Namespace) -> PipelineSpec:
    spec = load_spec(args.spec, args.overrides)
    if args.tracking_uri:
        spec.tracking.uri = args.tracking_uri
    if args.address:
        spec.cluster.address = args.address
    return spec


def check_inputs(spec: PipelineSpec, hub_data: bool = True) -> tuple[str, list[SpecIssue]]:
    """Model path and every task's data; returns the resolved model dir and every problem found.

    ``hub_data=False`` leaves hub datasets unchecked, so that a cluster spec validates offline.
    """
    from .data import check_task
    from .method.models import ModelError, resolve_model_dir

    issues: list[SpecIssue] = []
    model_dir = ""
    try:
        model_dir = resolve_model_dir(spec.model)
    except ModelError as err:
        issues.append(SpecIssue(field="model.name_or_path", value=spec.model.name_or_path, message=str(err)))
    used = set(spec.sources) | set(spec.targets)
    for task in spec.tasks:
        if task.name in used and (hub_data or task.kind != "hf"):
            budgets = spec.target.budgets() if task.name in spec.targets else ()
            issues.extend(check_task(task, spec.seed, budgets))
    if spec.model.task_type == "SEQ_2_SEQ_LM":
        issues += [SpecIssue(field="target.baselines", value=m, message="a text-to-text model has no classifier head "
                             "to probe", fix=f"drop {m}, or use task_type SEQ_CLS")
                   for m in spec.target.baselines if METHODS[m].needs_classifier_head]
    return model_dir, issues


def cmd_validate(args: argparse.Namespace) -> int:
    from .pipeline.preflight import declares_multi_node, multi_node_issues

    spec = load(args)
    _, issues = check_inputs(spec, hub_data=args.hub_data)
    issues += multi_node_issues(spec, declared=declares_multi_node(spec))
    if issues:
        raise SpecError(issues, args.spec)
    unchecked = [t.name for t in spec.tasks if t.kind == "hf"] if not args.hub_data else []
    note = f"; hub datasets not loaded (add --hub-data): {', '.join(unchecked)}" if unchecked else ""
    log.info("%s: ok (%d sources, %d targets)%s", args.spec, len(spec.sources), len(spec.targets), note)
    return 0


def plan_lines(spec: PipelineSpec) -> list[str]:
    def res(r) -> str:
        gpu = f", {r.gpus_per_worker:g} GPU" if r.gpus_per_worker else ""
        return f"{r.num_workers} worker(s) x ({r.cpus_per_worker:g} CPU{gpu})"

    t = spec.target
    seeds, budgets = spec.seed_list(), t.budgets()
    mpt_trials = t.search_space.trial_count([REFERENCE], t.num_samples, len(seeds)) * len(budgets)
    baseline_methods = t.baseline_methods(spec.sources)
    baseline_trials = t.search_space.trial_count(baseline_methods, t.num_samples, len(seeds)) * len(budgets)
    lines = [
        f"pipeline {spec.name}: model {spec.model.name_or_path} ({spec.model.task_type}), "
        f"{spec.prompt.num_virtual_tokens} virtual tokens, "
        + (f"seeds {seeds} (each its own sources and distillation; target data splits from seed {spec.seed})"
           if spec.seed_scope == "pipeline" and len(seeds) > 1 else f"seed {spec.seed} (data, sources, distillation)"),
        f"1. sources: {len(spec.sources)} Ray Train jobs in parallel, {spec.source.steps} steps each, "
        f"{res(spec.source.resources)} per job",
        *[f"     - source {name}" for name in spec.sources],
        f"2. distill: 1 Ray Train job, MPT num_tasks={len(spec.sources)} rank={spec.distill.rank}, "
        f"{spec.distill.steps} steps, lambda={spec.distill.lambda_:g}, T={spec.distill.temperature:g}, "
        f"{res(spec.distill.resources)}",
        *(["     - joint_multitask: 1 more Ray Train job at the same settings, task loss only (lambda=0, no "
           "teachers), in parallel with the sources"] if "joint" in upstream(t.baselines) else []),
        f"3. targets: {len(spec.targets)} Ray Tune sweeps in parallel, {mpt_trials} MPT trial(s) each "
        f"({t.scheduler.type}) + {baseline_trials} baseline trial(s), {t.steps} steps per trial, "
        f"{res(t.resources)} per trial, max concurrent {t.max_concurrent_trials or 'unlimited'} per sweep",
        *(["     - the baseline sweeps start when the sources end, beside the distillation (they do not start "
           "from the shared prompt); on a local Ray capped to the trials that fit beside it, and a target given "
           "none starts them when it ends"]
          if baseline_methods else []),
        *([f"     - seed_scope pipeline: steps 1 and 2 run once per seed ({len(seeds)} x)"
           if spec.seed_scope == "pipeline" else "     - seed_scope targets: steps 1 and 2 run once, at the first "
           "seed; the verdicts hold for that one shared prompt only"] if len(seeds) > 1 else []),
        f"     - every configuration at {len(seeds)} seed(s) {seeds}; training set: "
        f"{', '.join(b if b == 'full' else f'{b} shots per class' for b in map(str, budgets))} (one sweep each)",
        *[f"     - target {name}: search {yaml.safe_dump(t.search_space.root, default_flow_style=True).strip()}"
          for name in spec.targets],
        *([f"     - baselines: {', '.join(baseline_methods)}"] if baseline_methods else []),
        "4. report: every trial (CSV), each method over seeds with a 95% interval, MPT against each other method "
        + ("(a verdict over seeds and test examples, P(MPT > method), the smallest detectable difference)"
           if len(seeds) > 1 else "(one seed: differences, no verdict)") + ", plots: on the parent MLflow run",
        *([f"5. registry: each target's best MPT trial as a version of "
           f"{spec.registry.name.format(experiment=spec.experiment_name(), task='<task>', method=REFERENCE)}"
           f"{' (baselines too)' if spec.registry.baselines else ''}; alias @champion on the best validation"]
          if spec.registry.enabled else []),
        f"tracking: {redact(spec.tracking_uri())} experiment {spec.experiment_name()!r}; "
        f"storage: {redact(spec.storage())}",
    ]
    return lines


def cmd_plan(args: argparse.Namespace) -> int:
    spec = load(args)
    log.info("\n".join(plan_lines(spec)))
    if args.address:  # only when asked: plain `plan` stays offline
        from .pipeline.preflight import preflight

        issues = preflight(spec)
        if issues:
            raise SpecError(issues, f"{args.spec} against the cluster at {redact(spec.cluster.address)}")
        log.info("pre-flight against %s: every stage fits, tracking answers, storage is writable",
                 redact(spec.cluster.address))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    spec = load(args)
    model_dir, issues = check_inputs(spec)
    _set_local_ray_loopback(spec.cluster.address)
    import ray

    from .pipeline.preflight import preflight
    from .tracking import TrackingError

    owns_ray = not ray.is_initialized()  # a caller (a test, a notebook) may already be connected
    issues += preflight(spec)  # resources fit, tracking answers, storage writable: before any compute
    if issues:
        if owns_ray:
            ray.shutdown()
        raise SpecError(issues, args.spec)
    try:
        return _run(spec, model_dir, args.spec, args.rerun, args.no_cache, owns_ray, args.verbose)
    except TrackingError as err:
        raise SpecError([SpecIssue(field="tracking.uri", value=redact(spec.tracking_uri()), message=str(err),
                                   fix="start the server or fix the URI")], args.spec) from None


def _starts_local_ray(address: str | None) -> bool:
    return address is None and "RAY_ADDRESS" not in os.environ


def _set_local_ray_loopback(address: str | None) -> None:
    if _starts_local_ray(address):
        # Every port of a local Ray then binds 127.0.0.1 only (Ray's GCS and raylet otherwise listen on
        # every interface, whatever the node IP); Ray reads this once, at import, so it is set before
        # the first `import ray`.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _run(spec: PipelineSpec, model_dir: str, spec_path: str, rerun: list[str], no_cache: bool,
         owns_ray: bool, verbose: bool) -> int:
    from .runtime.console import Console

    run_tag = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    storage = spec.storage()
    log_file = (Path(storage) if "://" not in storage else Path.cwd()) / "logs" / f"{spec.name}-{run_tag}.log"
    with Console(log_file, verbose) as console:
        return _execute(spec, model_dir, spec_path, rerun, no_cache, owns_ray, run_tag, console)


def _execute(spec: PipelineSpec, model_dir: str, spec_path: str, rerun: list[str], no_cache: bool,
             owns_ray: bool, run_tag: str, console) -> int:
    import ray

    from .pipeline import cache, dag
    from .pipeline.stages.context import PipelineContext
    from .results import selection
    from .tracking import (ERROR_TAG, PIPELINE_TAG, SPEC_DIR, SPEC_TAG, TrackingContext, close_orphaned_runs,
                           ensure_experiment, kill_running_children, root_cause, start_parent_run, ui_command)

    uri = spec.tracking_uri()
    artifact_root = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" if uri.startswith("sqlite:") else None
    experiment_id = ensure_experiment(uri, spec.experiment_name(), artifact_root)
    for run_id in close_orphaned_runs(uri, experiment_id):
        log.info("[pipeline] run %s was left RUNNING by a pipeline that died; marked KILLED", run_id)
    parent = start_parent_run(uri, experiment_id, f"{spec.name}-{run_tag}", flat_params(spec),
                              {PIPELINE_TAG: run_tag, SPEC_TAG: Path(spec_path).name})
    parent.log_artifact(_spec_file(spec, run_tag), SPEC_DIR)
    local_ray = _starts_local_ray(spec.cluster.address)
    if not ray.is_initialized():
        # A local Ray without its dashboard: its ten or so processes cost a 2-CPU laptop about 10 s at
        # start-up (bench/overhead/); a cluster started with `ray start --head` keeps its own.
        ray.init(address=spec.cluster.address, logging_level="WARNING",
                 **({"include_dashboard": False} if local_ray else {}))
    console.hook_ray()
    ctx = PipelineContext(spec, model_dir, TrackingContext(uri, experiment_id, parent.run_id, run_tag),
                          spec.storage(), run_tag, cache.fingerprints(spec),
                          frozenset(cache.forced_stages(rerun, no_cache)), local_ray)
    started = time.time()
    log.info("[pipeline] %s run %s: %d sources -> distill -> %d targets; MLflow parent run %s\n"
             "[pipeline] Ray's, Tune's and the libraries' output: %s%s", spec.name, run_tag, len(spec.sources),
             len(spec.targets), parent.run_id, console.log_path, "" if console.verbose else " (--verbose shows it here)")
    try:
        table = dag.run_pipeline(ctx)
        verdicts = _analyse(uri, experiment_id, parent.run_id)
    except BaseException as err:
        cause = root_cause(err)
        # the graph stopped its other nodes (dag.run_pipeline): their runs did not fail, they were stopped
        ended = "was interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        kill_running_children(uri, experiment_id, parent.run_id, f"stopped because the pipeline {ended}: {cause[:3000]}")
        parent.set_tags({ERROR_TAG: cause[:4000]})
        _keep_log(parent, console)
        parent.end("FAILED" if not isinstance(err, KeyboardInterrupt) else "KILLED")
        log.error("[pipeline] FAILED after %.0fs: %s\nEarlier stages' runs and artifacts are kept; "
                  "run the same command again to reuse them. Full output: %s", time.time() - started, cause,
                  console.log_path)
        return EXIT_FAILED
    finally:
        if owns_ray:
            ray.shutdown()
    parent.log_metrics(0, {"wall_time_s": time.time() - started})
    _keep_log(parent, console)
    parent.end("FINISHED")
    reused = cache.reused_stages(uri, parent.run_id)
    log.info("\n[pipeline] reused %d stage(s) from earlier runs: %s", len(reused), ", ".join(sorted(reused)) or "none")
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_rows", 200):
        shown = table.drop(columns=["mlflow_run_id", "error", "registered_model", "config"])
        log.info("\nAll target trials:\n%s", shown.to_string(index=False))
        log.info("\nChosen per target, budget and method (on validation averaged over seeds; test scored once per "
                 "seed, on the reloaded model):\n%s", selection.summary(table).to_string(index=False))
    log.info("\n%s\n(again from MLflow alone, with plots: python -m orchestrator report %s --runs %s)", verdicts,
             spec.experiment_name(), parent.run_id)
    registered = sorted(table["registered_model"].dropna())
    if registered:
        log.info("\nRegistered models (mlflow.pyfunc.load_model, `mlflow models serve`, `python -m orchestrator "
                 "predict`; the alias @champion holds each name's best validation):\n  %s", "\n  ".join(registered))
    log.info("\n[pipeline] finished in %.0fs. Compare runs in the MLflow UI:\n  %s", time.time() - started, ui_command(uri))
    return 0


def _keep_log(parent, console) -> None:
    """The run's log file so far, on its parent run (``logs/``): Ray's session logs do not outlive the
    machine, and a failed run is when it is read."""
    from .tracking import LOGS_DIR

    console.flush()
    parent.log_artifact(console.log_path, LOGS_DIR)


def _analyse(uri: str, experiment_id: str, parent_run_id: str) -> str:
    """The report of this pipeline run, logged under ``report/`` of its parent run, as ``report``
    writes it; returns the verdicts for the console."""
    from mlflow.tracking import MlflowClient

    from .results.report import build_report, format_verdicts, log_to_parent

    with tempfile.TemporaryDirectory() as tmp:
        report = build_report(MlflowClient(uri), experiment_id, [parent_run_id], Path(tmp))
        log_to_parent(report, parent_run_id)
    return format_verdicts(report)


def flat_params(spec: PipelineSpec) -> dict[str, str]:
    """The spec as dotted MLflow params (``PipelineSpec.public_dump``: nothing that may carry credentials)."""
    out: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = str(value)[:6000]

    public = spec.public_dump()
    walk("", {k: v for k, v in public.items() if k != "tasks"})
    for task in spec.tasks:
        out[f"tasks.{task.name}"] = str(task.model_dump(mode="json", exclude_none=True))[:6000]
    return out


def _spec_file(spec: PipelineSpec, run_tag: str) -> Path:
    path = Path(tempfile.mkdtemp()) / f"{spec.name}-{run_tag}.yaml"
    path.write_text(yaml.safe_dump(spec.public_dump(), sort_keys=False))
    return path


def cmd_predict(args: argparse.Namespace) -> int:
    from .serve import predict

    job = predict.plan_job(args.model_uri, args.input, args.out, args.tracking_uri, args.batch_size, args.workers,
                           args.cpus_per_worker, args.gpus_per_worker, args.probabilities)
    _set_local_ray_loopback(args.address)
    import ray

    from .runtime.console import Console

    owns_ray = not ray.is_initialized()  # a caller (a test, a notebook) may already be connected
    if owns_ray:
        ray.init(address=args.address, logging_level="WARNING")
    try:
        with Console(None):  # the replicas' lines shown as the driver's; Ray's own output as Ray prints it
            predict.run_job(job)
    finally:
        if owns_ray:
            ray.shutdown()
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .results import runs
    from .results.report import build_report, format_verdicts
    from .spec.schema import local_tracking_uri

    uri = args.tracking_uri or local_tracking_uri()
    out = Path(args.out or f"report-{args.experiment}")
    if out.exists() and not out.is_dir():
        raise SpecError([SpecIssue(field="--out", value=str(out), message="is a file, not a directory",
                                   fix="pass a directory to write the report into")], "report")
    client, experiment_id, parent_run_ids = runs.select_parent_runs(uri, args.experiment, args.runs)
    report = build_report(client, experiment_id, parent_run_ids, out)
    log.info("%s\n\nReport of %d pipeline run(s) from %s in %s/:\n  %s", format_verdicts(report),
             len(parent_run_ids), redact(uri), out, "\n  ".join(sorted(f.name for f in report.files)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging()
    try:
        verbs = {"run": cmd_run, "validate": cmd_validate, "plan": cmd_plan, "predict": cmd_predict, "report": cmd_report}
        return verbs[args.verb](args)
    except SpecError as err:
        log.error("error: %s", err)
        return EXIT_BAD_INPUT

