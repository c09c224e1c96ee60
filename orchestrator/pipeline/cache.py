"""Stage fingerprints and reuse of finished stages from the MLflow experiment.

A stage's fingerprint hashes what determines its output: its own settings (not the resources that
only change speed), the base model, the prompt length, its task data spec, the seed, and its upstream
stages' fingerprints. A FINISHED run with the same fingerprint and its artifacts is reused instead of
retrained; so is a target whose results an earlier (possibly failed) pipeline already recorded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from ..method.distill import SHARED_PROMPT_FILE, STUDENT_HEADS_FILE, SharedPrompt, Teacher
from ..spec.methods import REFERENCE, upstream
from ..spec.schema import PipelineSpec
from ..tracking import (CACHE_TARGET_PREFIX, FINGERPRINT_TAG, REUSED_PREFIX, STAGE_TAG, RunLogger, TrackingContext,
                        TARGET_RESULTS, teacher_artifact)

STAGES = ("source", "distill", "target")
# Bump when a change to the method makes earlier results incomparable.
METHOD_VERSION = "1"
JOINT = "distill:joint"  # the joint_multitask student: a distillation job without teachers

log = logging.getLogger(__name__)


def _digest(*parts) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprints(spec: PipelineSpec) -> dict[str, str]:
    """``{"source:<task>": fp, "distill": fp, "distill:joint": fp, "target:<task>": fp}``."""
    common = {"model": spec.model.model_dump(), "prompt": spec.prompt.model_dump(), "seed": spec.seed,
              "method_version": METHOD_VERSION}

    def settings(stage) -> dict:
        # Worker count changes how data is sharded, so it is part of the result; CPUs and GPUs are not.
        out = stage.model_dump(by_alias=True, exclude={"resources", "max_failures", "max_concurrent_trials"})
        out["num_workers"] = stage.resources.num_workers
        return out

    fps = {f"source:{t}": _digest(common, settings(spec.source), spec.task(t).model_dump()) for t in spec.sources}
    fps["distill"] = _digest(common, settings(spec.distill), [fps[f"source:{t}"] for t in spec.sources])
    # the joint_multitask ablation: no teachers, so neither their fingerprints nor lambda and T matter
    joint = {k: v for k, v in settings(spec.distill).items() if k not in ("lambda", "temperature")}
    fps[JOINT] = _digest(common, joint, "joint_multitask", [spec.task(t).model_dump() for t in spec.sources])
    stage_keys = {"distill": ["distill"], "sources": [f"source:{t}" for t in spec.sources], "joint": [JOINT]}
    needed = upstream([REFERENCE, *spec.target.baselines])
    inputs = [fps[key] for stage, keys in stage_keys.items() if stage in needed for key in keys]
    if spec.seed_scope == "pipeline":  # every other seed's sources and distillation feed the targets too
        inputs += [{k: v for k, v in fingerprints(spec.for_seed(s)).items() if not k.startswith("target:")}
                   for s in spec.seed_list()[1:]]
    for t in spec.targets:
        fps[f"target:{t}"] = _digest(common, settings(spec.target), spec.task(t).model_dump(), inputs,
                                     spec.seed_list())
    return fps


def forced_stages(rerun: list[str], no_cache: bool) -> set[str]:
    """Stages that must run again: ``--rerun X`` forces X and every stage after it (their inputs change)."""
    if no_cache:
        return set(STAGES)
    first = min((STAGES.index(r) for r in rerun), default=len(STAGES))
    return set(STAGES[first:])


def _finished_run(ctx: TrackingContext, stage: str, fingerprint: str):
    client = MlflowClient(ctx.uri)
    runs = client.search_runs(
        [ctx.experiment_id],
        f"tags.`{STAGE_TAG}` = '{stage}' and tags.`{FINGERPRINT_TAG}` = '{fingerprint}' "
        "and attributes.status = 'FINISHED'",
        order_by=["attributes.end_time DESC"], max_results=5)
    return client, runs


def _download(client: MlflowClient, run_id: str, path: str, into: str) -> Path | None:
    try:
        return Path(client.download_artifacts(run_id, path, into))
    except Exception:  # artifact deleted or store moved: the run cannot be reused, so retrain
        return None


def reuse_source(ctx, task: str) -> Teacher | None:
    """The teacher of an earlier FINISHED run with this source's fingerprint, or None."""
    if "source" in ctx.forced:
        return None
    client, runs = _finished_run(ctx.tracking, "source", ctx.fingerprints[f"source:{task}"])
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            file = _download(client, run.info.run_id, teacher_artifact(task), tmp)
            if file is not None:
                _note_reuse(ctx, f"source:{task}", run.info.run_id)
                return Teacher.from_tensors(task, load_file(str(file)))
    return None


def reuse_distill(ctx, key: str = "distill"):
    """The shared prompt (and student heads) of an earlier FINISHED distillation (``key`` ``JOINT``:
    the joint_multitask student), or None."""
    if "distill" in ctx.forced:
        return None
    client, runs = _finished_run(ctx.tracking, "distill", ctx.fingerprints[key])
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            shared = _download(client, run.info.run_id, SHARED_PROMPT_FILE, tmp)
            if shared is None:
                continue
            heads = _download(client, run.info.run_id, STUDENT_HEADS_FILE, tmp)
            _note_reuse(ctx, key, run.info.run_id)
            return SharedPrompt(load_file(str(shared)), load_file(str(heads)) if heads else {})
    return None


def _target_tag(task: str) -> str:
    return f"{CACHE_TARGET_PREFIX}{task}"


def recorded_target(ctx, task: str) -> tuple[str, list[dict]] | None:
    """(run id, result rows) that an earlier pipeline recorded for this target's fingerprint, or None."""
    if "target" in ctx.forced:
        return None
    client = MlflowClient(ctx.tracking.uri)
    runs = client.search_runs([ctx.tracking.experiment_id],
                              f"tags.`{_target_tag(task)}` = '{ctx.fingerprints[f'target:{task}']}'",
                              order_by=["attributes.start_time DESC"], max_results=5)
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            file = _download(client, run.info.run_id, f"{TARGET_RESULTS}/{task}.json", tmp)
            if file is not None:
                return run.info.run_id, json.loads(file.read_text())
    return None


def reuse_target(ctx, task: str) -> list[dict] | None:
    """The result rows an earlier pipeline recorded for this target's fingerprint, or None."""
    found = recorded_target(ctx, task)
    if found is None:
        return None
    run_id, rows = found
    _note_reuse(ctx, f"target:{task}", run_id)
    return [{**row, "reused_from": run_id} for row in rows]


def record_target(ctx, task: str, rows: list[dict]) -> None:
    """Keep a finished target's rows on the parent run, so a later run can reuse them even if this
    pipeline fails in another target."""
    parent = RunLogger(ctx.tracking.uri, ctx.tracking.parent_run_id)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / f"{task}.json"
        file.write_text(json.dumps(rows, default=str, indent=1))
        parent.log_artifact(file, TARGET_RESULTS)
    parent.set_tags({_target_tag(task): ctx.fingerprints[f"target:{task}"]})


def _note_reuse(ctx, key: str, run_id: str) -> None:
    # each seed's branch reuses its own stages: the seed label keeps their tags apart
    name = ctx.tag(key)
    RunLogger(ctx.tracking.uri, ctx.tracking.parent_run_id).set_tags({f"{REUSED_PREFIX}{name}": run_id})
    log.info("[cache] %s: reused from run %s (same fingerprint)", name, run_id)


def reused_stages(uri: str, parent_run_id: str) -> dict[str, str]:
    tags = MlflowClient(uri).get_run(parent_run_id).data.tags
    return {k.removeprefix(REUSED_PREFIX): v for k, v in tags.items() if k.startswith(REUSED_PREFIX)}
