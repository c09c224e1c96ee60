"""Stage fingerprints: what changes which stage's identity; and reuse from a real SQLite MLflow store,
which needs a finished run's artifacts, not just its record (no Ray needed)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import save_file

from orchestrator.method.distill import SHARED_PROMPT_FILE, STUDENT_HEADS_FILE
from orchestrator.pipeline import cache
from orchestrator.pipeline.cache import fingerprints, forced_stages
from orchestrator.pipeline.stages.context import PipelineContext
from orchestrator.spec.loading import load_spec
from orchestrator.tracking import FINGERPRINT_TAG, STAGE_TAG, TARGET_RESULTS, TrackingContext, teacher_artifact

SMOKE = str(Path(__file__).resolve().parents[3] / "pipelines" / "smoke.yaml")


def changed(*overrides: str) -> set[str]:
    before, after = fingerprints(load_spec(SMOKE)), fingerprints(load_spec(SMOKE, list(overrides)))
    assert before.keys() == after.keys()
    return {k for k in before if before[k] != after[k]}


def test_fingerprints_are_stable_across_loads():
    assert changed() == set()


def test_a_target_search_space_change_touches_only_that_target():
    assert changed("target.search_space={rank: {grid: [1]}, lr: {grid: [0.1]}}") == {"target:review_polarity"}


def test_a_source_task_change_touches_that_source_the_distillation_and_every_target():
    assert changed("tasks.0.max_train_examples=150") == {"source:sentiment", "distill", "distill:joint",
                                                         "target:review_polarity"}


def test_seeds_and_budgets_touch_only_the_targets():
    """The first seed's sources and distillation stay the same whatever seeds follow it."""
    assert changed("seeds=[0, 1]") == {"target:review_polarity"}
    assert changed("seeds=[0, 1]", "seed_scope=targets") == {"target:review_polarity"}
    assert changed("target.shots=[4]") == {"target:review_polarity"}


def test_the_joint_student_ignores_teacher_settings_and_targets_depend_on_it_only_when_asked():
    assert changed("source.lr=0.1") == {"source:sentiment", "source:nli", "distill", "target:review_polarity"}
    assert "distill:joint" not in changed("distill.temperature=3.0", "distill.lambda=0.5")
    assert "distill:joint" in changed("distill.steps=20")
    assert changed("target.baselines=[joint_multitask]") == {"target:review_polarity"}


def test_distill_settings_touch_distill_and_targets_only():
    assert changed("distill.temperature=3.0") == {"distill", "target:review_polarity"}
    assert changed("distill.steps=20") == {"distill", "distill:joint", "target:review_polarity"}


def test_cpu_and_gpu_requests_do_not_change_results_but_worker_count_does():
    assert changed("source.resources.cpus_per_worker=1", "target.max_concurrent_trials=1",
                   "source.max_failures=5") == set()
    assert "source:sentiment" in changed("source.resources.num_workers=2")


def test_rerun_forces_the_stage_and_everything_after_it():
    assert forced_stages([], False) == set()
    assert forced_stages(["distill"], False) == {"distill", "target"}
    assert forced_stages(["target", "source"], False) == {"source", "distill", "target"}
    assert forced_stages([], True) == {"source", "distill", "target"}


def test_pipeline_seed_scope_gives_each_seed_its_own_sources_and_distillation():
    spec = load_spec(SMOKE, ["seeds=[0, 1]"])  # seed_scope pipeline: the default
    first, second = fingerprints(spec.for_seed(0)), fingerprints(spec.for_seed(1))
    assert first["distill"] == fingerprints(spec)["distill"]  # the first seed's branch is the spec's own
    assert all(first[k] != second[k] for k in ("source:nli", "source:sentiment", "distill", "distill:joint"))
    # the targets depend on every seed's branch, so they are not the targets-scope ones
    targets_scope = fingerprints(load_spec(SMOKE, ["seeds=[0, 1]", "seed_scope=targets"]))
    assert fingerprints(spec)["target:review_polarity"] != targets_scope["target:review_polarity"]


def artifact_file(client: MlflowClient, run_id: str, path: str) -> Path:
    return Path(urlsplit(client.get_run(run_id).info.artifact_uri).path) / path


def test_a_finished_stage_whose_artifacts_were_deleted_is_trained_again(tmp_path):
    """Each stage node runs its stage when ``reuse_*`` finds nothing (``dag.py``): a FINISHED run with the
    same fingerprint is reused while its artifact exists, and no longer once the artifact is deleted."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("mpt-smoke", artifact_location=(tmp_path / "mlartifacts").as_uri())
    parent = client.create_run(experiment).info.run_id
    spec = load_spec(SMOKE)
    ctx = PipelineContext(spec, "", TrackingContext(uri, experiment, parent, "tag"), str(tmp_path), "tag",
                          fingerprints(spec))
    prompt = {"prompt_embeddings": torch.ones(4, 32)}
    for stage, key, paths in (("source", "source:sentiment", [teacher_artifact("sentiment")]),
                              ("distill", "distill", [SHARED_PROMPT_FILE, STUDENT_HEADS_FILE])):
        run = client.create_run(experiment, tags={STAGE_TAG: stage, FINGERPRINT_TAG: ctx.fingerprints[key]}).info.run_id
        for path in paths:
            (tmp_path / stage / path).parent.mkdir(parents=True, exist_ok=True)
            save_file(prompt, str(tmp_path / stage / path))
        client.log_artifacts(run, str(tmp_path / stage))
        client.set_terminated(run, "FINISHED")
    cache.record_target(ctx, "review_polarity", [{"method": "mpt", "rank": 1}])

    assert torch.equal(cache.reuse_source(ctx, "sentiment").prompt, prompt["prompt_embeddings"])
    assert torch.equal(cache.reuse_distill(ctx).tensors["prompt_embeddings"], prompt["prompt_embeddings"])
    assert cache.reuse_target(ctx, "review_polarity") == [{"method": "mpt", "rank": 1, "reused_from": parent}]
    for stage, path in (("source", teacher_artifact("sentiment")), ("distill", SHARED_PROMPT_FILE)):
        (run,) = client.search_runs([experiment], f"tags.`{STAGE_TAG}` = '{stage}'")
        artifact_file(client, run.info.run_id, path).unlink()
    artifact_file(client, parent, f"{TARGET_RESULTS}/review_polarity.json").unlink()
    assert cache.reuse_source(ctx, "sentiment") is None
    assert cache.reuse_distill(ctx) is None
    assert cache.reuse_target(ctx, "review_polarity") is None
