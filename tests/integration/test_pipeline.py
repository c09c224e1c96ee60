"""The smoke pipeline end to end on a real local Ray, in both task types, checked through MLflow;
then the same store again: cached stages are reused, and nothing secret was ever logged."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from helpers.pipeline import run_smoke
from helpers.secrets import ENV_SECRETS, leaks, run_texts
from helpers.specs import SMOKE as SMOKE_PATH
from mlflow.tracking import MlflowClient
from peft import PeftModel

from orchestrator.data import load_task
from orchestrator.method import models
from orchestrator.method.train import Encoder, evaluate
from orchestrator.spec.loading import load_spec
from orchestrator.tracking import PARENT_TAG, STAGE_TAG, TASK_TAG

SMOKE = str(SMOKE_PATH)
os.environ.update(ENV_SECRETS)  # in the driver's environment and, set before Ray starts, every worker's

VARIANTS = {
    "seq_cls": [],
    "seq2seq": ["--set", "model.name_or_path=tiny:t5", "--set", "model.task_type=SEQ_2_SEQ_LM"],
}


@pytest.fixture(scope="module")
def seq_cls_store(local_ray, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("seq_cls")
    rc, out = run_smoke(tmp_path)
    assert rc == 0, out
    return tmp_path, out


def new_runs(uri: str, before: list) -> list:
    _, after = runs_of(uri)
    known = {r.info.run_id for r in before}
    return [r for r in after if r.info.run_id not in known]


def runs_of(uri: str, name: str = "mpt-smoke"):
    client = MlflowClient(uri)
    return client, client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=1000)


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_smoke_pipeline_builds_the_run_tree(local_ray, seq_cls_store, tmp_path_factory, variant):
    if variant == "seq_cls":
        tmp_path, out = seq_cls_store
    else:
        tmp_path = tmp_path_factory.mktemp(variant)
        rc, out = run_smoke(tmp_path, *VARIANTS[variant])
        assert rc == 0, out
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert "Chosen per target, budget and method" in out and "mlflow ui --backend-store-uri" in out

    spec = load_spec(SMOKE, [v for v in VARIANTS[variant] if v != "--set"])
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(spec.name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert len(children) == len(runs) - 1
    by_stage = {s: [r for r in children if r.data.tags[STAGE_TAG] == s] for s in ("source", "distill", "target")}
    assert sorted(r.data.tags[TASK_TAG] for r in by_stage["source"]) == sorted(spec.sources)
    assert len(by_stage["distill"]) == 1
    space = spec.target.search_space.root
    grid = len(space["rank"]["grid"]) * len(space["lr"]["grid"])
    assert len(by_stage["target"]) == grid + len(space["lr"]["grid"])  # + vanilla_pt
    assert {r.info.status for r in runs} == {"FINISHED"}
    # the compare view lines params up: one set of names per stage
    assert len({frozenset(r.data.params) for r in by_stage["target"]}) == 1
    assert {"lr", "rank", "num_virtual_tokens", "trainable_params"} <= set(by_stage["target"][0].data.params)

    source = by_stage["source"][0]
    losses = client.get_metric_history(source.info.run_id, "train_loss")
    assert [m.step for m in losses] == list(range(1, spec.source.steps + 1))
    metric = f"eval_{spec.task(spec.targets[0]).metric}"
    assert client.get_metric_history(source.info.run_id, metric)
    assert [a.path for a in client.list_artifacts(source.info.run_id, "teacher")] == \
        [f"teacher/teacher_{source.data.tags[TASK_TAG]}.safetensors"]
    assert "shared_prompt.safetensors" in {a.path for a in client.list_artifacts(by_stage["distill"][0].info.run_id)}
    assert "report/results.csv" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}

    # the best MPT trial's adapter, reloaded as a user would, scores its logged metric again
    (best,) = [r for r in by_stage["target"] if r.data.tags.get("mpt.best") and r.data.params["method"] == "mpt"]
    adapter = client.download_artifacts(best.info.run_id, "best_adapter", str(tmp_path / "dl"))
    data = load_task(spec.task(spec.targets[0]), spec.seed)
    model_dir = models.resolve_model_dir(spec.model)
    base = models.load_base_model(model_dir, spec.model.task_type, data.num_labels, spec.seed)
    model = PeftModel.from_pretrained(base, adapter)
    encoder = Encoder(models.load_tokenizer(model_dir), spec.model.task_type, spec.model.max_length,
                      spec.model.max_target_length)
    with torch.no_grad():
        again = evaluate(model, data, "validation", encoder, task_id=0)[metric]
    logged = client.get_metric_history(best.info.run_id, metric)
    assert again == pytest.approx(logged[-1].value)
    assert client.get_metric_history(best.info.run_id, "test_" + metric.removeprefix("eval_"))


@pytest.mark.slow
def test_the_baselines_start_while_the_distillation_trains(seq_cls_store):
    """They start from the teachers, not the shared prompt, so their node starts when the sources end:
    its first line comes before the distillation's last (whose Train job alone takes seconds to start),
    where before it came after the MPT sweep. The test's Ray has 2 CPUs: the distillation takes one
    (2 workers x 0.5), which leaves room for two baseline trials (0.5 each) beside it, and no more."""
    _, out = seq_cls_store
    assert "[pipeline] baseline sweeps beside the distillation: review_polarity at most 2 trial(s) at once" in out
    lines = out.splitlines()
    baselines = [i for i, line in enumerate(lines) if line.startswith("[target:review_polarity] baselines")]
    sweep = [i for i, line in enumerate(lines) if line.startswith("[target:review_polarity] sweep over")]
    distill_done = [i for i, line in enumerate(lines) if line.startswith("[distill] done")]
    assert len(baselines) == len(sweep) == len(distill_done) == 1, out[-3000:]
    assert baselines[0] < distill_done[0] < sweep[0], "\n".join(lines[:80])


@pytest.mark.slow
def test_nothing_secret_is_logged(seq_cls_store, tmp_path):
    store, out = seq_cls_store
    client, runs = runs_of(f"sqlite:///{store}/mlflow.db")
    texts = {"terminal": out, **run_texts(client, runs, tmp_path)}
    assert len(texts) > 100 and any(" artifact " in name for name in texts)  # params, tags, artifacts all read
    assert leaks(ENV_SECRETS.values(), texts) == []


@pytest.mark.slow
def test_a_second_run_reuses_every_finished_stage(seq_cls_store):
    store, _ = seq_cls_store
    uri = f"sqlite:///{store}/mlflow.db"
    _, before = runs_of(uri)
    rc, out = run_smoke(store)
    assert rc == 0, out
    assert "reused 4 stage(s) from earlier runs: distill, source:nli, source:sentiment, target:review_polarity" in out
    new = new_runs(uri, before)
    assert len(new) == 1 and PARENT_TAG not in new[0].data.tags and new[0].info.status == "FINISHED"
    assert "Chosen per target, budget and method" in out
    # the reused target's trials are read from the run that trained them: the verdict is still there
    assert re.search(r"review_polarity\s+full\s+vanilla_pt\s", out.split("MPT minus each method")[1])
    assert any(k.startswith("diff_vanilla_pt_review_polarity") for k in new[0].data.metrics)


@pytest.mark.slow
def test_changing_a_target_search_space_retrains_only_that_target(seq_cls_store):
    store, _ = seq_cls_store
    uri = f"sqlite:///{store}/mlflow.db"
    _, before = runs_of(uri)
    rc, out = run_smoke(store, "--set", "target.search_space={rank: {grid: [1]}, lr: {grid: [0.1]}}")
    assert rc == 0, out
    assert "reused 3 stage(s) from earlier runs: distill, source:nli, source:sentiment" in out
    stages = sorted(r.data.tags.get(STAGE_TAG, "parent") for r in new_runs(uri, before))
    assert stages == ["parent", "target", "target"]  # one MPT trial + one vanilla_pt baseline


def only(paths) -> Path:
    (path,) = list(paths)
    return path


@pytest.mark.slow
def test_logged_artifacts_load_back_exactly(seq_cls_store, tmp_path):
    """What MLflow holds is what training produced: the shared prompt downloaded from the distill run
    equals the distillation job's final checkpoint and loads through PEFT's own init path; the best
    adapter downloaded from its trial run equals the trial's final checkpoint, tensor for tensor and
    logit for logit."""
    from peft import MultitaskPromptTuningConfig, MultitaskPromptTuningInit, TaskType, get_peft_model
    from safetensors.torch import load_file

    store, _ = seq_cls_store
    client, runs = runs_of(f"sqlite:///{store}/mlflow.db")
    spec = load_spec(SMOKE)
    first = [r for r in runs if r.data.tags.get(PARENT_TAG) == min(
        (p for p in runs if PARENT_TAG not in p.data.tags), key=lambda p: p.info.start_time).info.run_id]
    (distill,) = [r for r in first if r.data.tags[STAGE_TAG] == "distill"]
    logged = Path(client.download_artifacts(distill.info.run_id, "shared_prompt.safetensors", str(tmp_path)))
    trained = only((store / "ray_results").glob("mpt-smoke-distill-*/checkpoint_*/shared_prompt.safetensors"))
    logged_t, trained_t = load_file(str(logged)), load_file(str(trained))
    assert set(logged_t) == {"prompt_embeddings", "prefix_task_cols", "prefix_task_rows"}
    assert all(torch.equal(logged_t[k], trained_t[k]) for k in logged_t)
    model_dir = models.resolve_model_dir(spec.model)
    for k in range(len(spec.sources)):
        config = MultitaskPromptTuningConfig(
            task_type=TaskType.SEQ_CLS, num_virtual_tokens=spec.prompt.num_virtual_tokens, num_tasks=1,
            num_ranks=spec.distill.rank, num_transformer_submodules=1, prompt_tuning_init_task=k,
            prompt_tuning_init=MultitaskPromptTuningInit.EXACT_SOURCE_TASK, prompt_tuning_init_state_dict_path=str(logged))
        encoder = get_peft_model(models.load_base_model(model_dir, "SEQ_CLS", 2), config).prompt_encoder["default"]
        assert torch.equal(encoder.embedding.weight.detach(), logged_t["prompt_embeddings"])
        assert torch.equal(encoder.prefix_task_cols.detach()[0], logged_t["prefix_task_cols"][k])
        assert torch.equal(encoder.prefix_task_rows.detach()[0], logged_t["prefix_task_rows"][k])

    (best,) = [r for r in first if r.data.tags.get("mpt.best") and r.data.params.get("method") == "mpt"]
    adapter = client.download_artifacts(best.info.run_id, "best_adapter", str(tmp_path / "dl"))
    trial_dir = only((store / "ray_results").glob(f"mpt-smoke-target-*/*_{best.data.tags['mpt.trial_id']}_*"))
    final = max(trial_dir.glob("checkpoint_*"))  # the trial's last report: the model as training left it
    data = load_task(spec.task(spec.targets[0]), spec.seed)
    enc = Encoder(models.load_tokenizer(model_dir), "SEQ_CLS", spec.model.max_length, spec.model.max_target_length)
    batch = enc(data.test, data.label_words, task_id=0)
    batch.pop("labels")
    loaded = []
    for path in (adapter, final):
        model = PeftModel.from_pretrained(models.load_base_model(model_dir, "SEQ_CLS", data.num_labels, spec.seed),
                                          str(path)).eval()
        with torch.no_grad():
            loaded.append((model(**batch).logits, {n: p.detach().clone() for n, p in model.named_parameters()
                                                   if "prompt_encoder" in n or "modules_to_save" in n}))
    (logits_a, params_a), (logits_b, params_b) = loaded
    assert params_a and params_a.keys() == params_b.keys()
    assert all(torch.equal(params_a[n], params_b[n]) for n in params_a)
    assert torch.equal(logits_a, logits_b)
    # and it is the trained prompt, not the shared one it started from
    prompt = next(v for n, v in params_a.items() if "embedding" in n)
    assert not torch.equal(prompt, logged_t["prompt_embeddings"])


def assert_intact(uri: str, before: list) -> None:
    """Every earlier run still there, with the status and artifacts it had."""
    client, after = runs_of(uri)
    now = {r.info.run_id: r for r in after}
    assert all(r.info.run_id in now and now[r.info.run_id].info.status == r.info.status for r in before)
    for r in before:
        if r.data.tags.get(STAGE_TAG) in ("source", "distill") and r.info.status == "FINISHED":
            assert client.list_artifacts(r.info.run_id), r.info.run_name


@pytest.mark.slow
def test_rerun_distill_retrains_distill_and_targets_only(seq_cls_store):
    store, _ = seq_cls_store
    uri = f"sqlite:///{store}/mlflow.db"
    _, before = runs_of(uri)
    rc, out = run_smoke(store, "--rerun", "distill")
    assert rc == 0, out
    assert "reused 2 stage(s) from earlier runs: source:nli, source:sentiment" in out
    stages = sorted(r.data.tags.get(STAGE_TAG, "parent") for r in new_runs(uri, before))
    assert stages == ["distill", "parent", "target", "target", "target"]  # 2 MPT trials + vanilla_pt
    assert_intact(uri, before)


@pytest.mark.slow
def test_no_cache_retrains_everything(seq_cls_store):
    store, _ = seq_cls_store
    uri = f"sqlite:///{store}/mlflow.db"
    _, before = runs_of(uri)
    rc, out = run_smoke(store, "--no-cache")
    assert rc == 0, out
    assert "reused 0 stage(s) from earlier runs: none" in out
    stages = sorted(r.data.tags.get(STAGE_TAG, "parent") for r in new_runs(uri, before))
    assert stages == ["distill", "parent", "source", "source", "target", "target", "target"]
    assert_intact(uri, before)
