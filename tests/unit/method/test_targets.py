"""orchestrator.method.targets: the model each target method trains, and a trial's model saved and
loaded again the way a user would (PeftModel.from_pretrained; the linear probe's head file)."""

from __future__ import annotations

import pytest
import torch
from helpers.models import L, encoder, small

from orchestrator.method import models
from orchestrator.method.distill import SHARED_PROMPT_FILE, SharedPrompt, Teacher
from orchestrator.method.targets import build_target_model, load_trial_model, save_trial_model, task_id_of

METHODS = ["mpt", "vanilla_pt", "head_only", "single_source:sentiment"]
D = 32  # hidden size of tiny:bert


def start(num_tasks: int = 2, rank: int = 2) -> tuple[SharedPrompt, dict[str, Teacher]]:
    torch.manual_seed(3)
    shared = SharedPrompt({"prompt_embeddings": torch.randn(L, D), "prefix_task_cols": torch.randn(num_tasks, L, rank),
                           "prefix_task_rows": torch.randn(num_tasks, rank, D)}, {})
    teachers = {"sentiment": Teacher("sentiment", torch.randn(L, D), torch.randn(2, D), torch.randn(2))}
    return shared, teachers


def build(method: str, bert_dir: str, tmp_path, rank: int = 2, num_labels: int = 2) -> torch.nn.Module:
    shared, teachers = start()
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    return build_target_model(method, rank, bert_dir, "SEQ_CLS", L, num_labels, 0, shared, teachers, workdir)


def test_task_ids():
    assert task_id_of("mpt") == task_id_of("no_distill") == task_id_of("joint_multitask") == 0
    assert [task_id_of(m) for m in METHODS[1:]] == [None, None, None]


def test_no_distill_starts_exactly_at_the_mean_of_the_teachers(bert_dir, tmp_path):
    shared, teachers = start()
    teachers["nli"] = Teacher("nli", torch.randn(L, D), torch.randn(3, D), torch.randn(3))
    workdir = tmp_path / "work"
    workdir.mkdir()
    model = build_target_model("no_distill", 2, bert_dir, "SEQ_CLS", L, 2, 0, shared, teachers, workdir)
    prompt = model.prompt_encoder[models.ADAPTER](torch.arange(L)[None], torch.tensor([task_id_of("no_distill")]))
    mean = (teachers["sentiment"].prompt + teachers["nli"].prompt) / 2
    assert torch.allclose(prompt[0], mean, atol=1e-6)  # u v^T = 1: the start is the mean itself
    assert not torch.allclose(prompt[0], shared.tensors["prompt_embeddings"])
    assert models.count_trainable(model) == models.count_trainable(build("mpt", bert_dir, tmp_path))


def test_joint_multitask_starts_at_the_joint_student(bert_dir, tmp_path):
    shared, teachers = start()
    joint = SharedPrompt({"prompt_embeddings": torch.randn(L, D)}, {})
    workdir = tmp_path / "work"
    workdir.mkdir()
    model = build_target_model("joint_multitask", 1, bert_dir, "SEQ_CLS", L, 2, 0, shared, teachers, workdir, joint)
    prompt = model.prompt_encoder[models.ADAPTER](torch.arange(L)[None], torch.tensor([0]))
    assert torch.allclose(prompt[0], joint.tensors["prompt_embeddings"], atol=1e-6)


@pytest.mark.parametrize("rank", [1, 2])
def test_mpt_starts_at_the_shared_prompt(bert_dir, tmp_path, rank):
    model = build("mpt", bert_dir, tmp_path, rank=rank, num_labels=3)
    shared, _ = start()
    assert (tmp_path / "work" / SHARED_PROMPT_FILE).is_file()  # PEFT read P* from the file written for it
    prompt = model.prompt_encoder[models.ADAPTER](torch.arange(L)[None], torch.tensor([task_id_of("mpt")]))
    assert torch.allclose(prompt[0], shared.tensors["prompt_embeddings"], atol=1e-6)
    assert models.count_trainable(model) == L * D + L * rank + rank * D + 3 * D + 3  # one task's update + fresh head


def test_single_source_starts_at_its_teacher_and_vanilla_does_not(bert_dir, tmp_path):
    _, teachers = start()
    single = build("single_source:sentiment", bert_dir, tmp_path)
    assert torch.equal(models.prompt_tensor(single), teachers["sentiment"].prompt)
    vanilla = build("vanilla_pt", bert_dir, tmp_path)
    assert not torch.allclose(models.prompt_tensor(vanilla), teachers["sentiment"].prompt)
    # every method gets a fresh head: a target's labels are its own, not the teacher's
    assert not torch.allclose(models.head_module(single).weight, teachers["sentiment"].head_weight)
    assert models.count_trainable(single) == models.count_trainable(vanilla) == L * D + 2 * D + 2


def test_head_only_is_the_linear_probe(bert_dir, tmp_path):
    model = build("head_only", bert_dir, tmp_path)
    assert not hasattr(model, "prompt_encoder")
    assert models.count_trainable(model) == 2 * D + 2


@pytest.mark.parametrize("method", METHODS)
def test_a_saved_trial_model_loads_back_to_the_same_outputs(bert_dir, tmp_path, method):
    model = build(method, bert_dir, tmp_path)
    with torch.no_grad():  # as if trained: every trainable weight moved away from its start
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    saved = tmp_path / "saved"
    saved.mkdir()
    save_trial_model(model, method, saved)
    loaded = load_trial_model(method, bert_dir, "SEQ_CLS", 2, 0, str(saved))
    data = small("review_polarity")
    batch = encoder(bert_dir)(data.validation[:4], data.label_words, task_id=task_id_of(method))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(**inputs).logits, model(**inputs).logits, atol=1e-5)
