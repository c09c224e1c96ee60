"""The smoke pipeline end to end on a real local Ray, in both task types, checked through MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from peft import PeftModel

from orchestrator import models
from orchestrator.cli import main
from orchestrator.spec import load_spec
from orchestrator.tasks import load_task
from orchestrator.train import Encoder, evaluate
from orchestrator.tracking import PARENT_TAG, STAGE_TAG, TASK_TAG

SMOKE = str(Path(__file__).resolve().parents[1] / "pipelines" / "smoke.yaml")
VARIANTS = {
    "seq_cls": [],
    "seq2seq": ["--set", "model.name_or_path=tiny:t5", "--set", "model.task_type=SEQ_2_SEQ_LM"],
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_smoke_pipeline_builds_the_run_tree(local_ray, tmp_path, monkeypatch, variant, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["run", SMOKE, "--tracking-uri", uri, *VARIANTS[variant]]) == 0
    out = capsys.readouterr().out
    assert "Best per target and method" in out and "mlflow ui --backend-store-uri" in out

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
    grid = len(spec.target.search_space["rank"]["grid"]) * len(spec.target.search_space["lr"]["grid"])
    assert len(by_stage["target"]) == grid + len(spec.target.search_space["lr"]["grid"])  # + vanilla_pt
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
