"""The method without Ray: PEFT construction, the distillation loss, the teacher pass, the training loop."""

from __future__ import annotations

import pytest
import torch
from peft import MultitaskPromptTuningConfig, MultitaskPromptTuningInit, TaskType, get_peft_model

from orchestrator import models
from orchestrator.distill import Teacher, distill_step_loss, distillation_loss, teacher_overrides
from orchestrator.spec import ModelSpec, TaskSpec
from orchestrator.stages import SharedPrompt, init_student, label_slices, student_tensors
from orchestrator.tasks import load_task
from orchestrator.train import Encoder, batch_stream, evaluate, fit, task_loss

L = 4  # virtual tokens


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> str:
    return models.resolve_model_dir(ModelSpec(name_or_path="tiny:bert"), tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory) -> str:
    return models.resolve_model_dir(ModelSpec(name_or_path="tiny:t5"), tmp_path_factory.mktemp("models"))


def encoder(model_dir: str, task_type: str = "SEQ_CLS") -> Encoder:
    return Encoder(models.load_tokenizer(model_dir), task_type, 32, 4)


def small(name: str):
    return load_task(TaskSpec(name=name, max_train_examples=64, max_eval_examples=16), 0)


# ---------------------------------------------------------------- the loss


def test_distillation_loss_is_zero_when_teacher_equals_student():
    logits, hidden = torch.randn(5, 3), torch.randn(5, 7, 8)
    l_logits, l_hidden = distillation_loss(logits, logits.clone(), hidden, hidden.clone(), torch.ones(5, 7), 2.0)
    assert l_logits.item() == pytest.approx(0.0, abs=1e-6)
    assert l_hidden.item() == 0.0


def test_distillation_loss_gradient_matches_the_closed_form():
    torch.manual_seed(0)
    T = 2.0
    z_s = torch.randn(4, 3, requires_grad=True)
    z_t = torch.randn(4, 3)
    h_s = torch.randn(4, 5, 6, requires_grad=True)
    h_t = torch.randn(4, 5, 6)
    mask = torch.ones(4, 5)
    mask[0, 3:] = 0  # padding must not count
    l_logits, l_hidden = distillation_loss(z_s, z_t, h_s, h_t, mask, T)
    assert l_logits.item() > 0 and l_hidden.item() > 0
    (l_logits + l_hidden).backward()
    # d/dz_s of T^2 * mean_b KL(p_t || p_s) = T * (p_s - p_t) / B
    expected = T * (torch.softmax(z_s.detach() / T, -1) - torch.softmax(z_t / T, -1)) / 4
    assert torch.allclose(z_s.grad, expected, atol=1e-6)
    # d/dh_s of masked mean over positions of mean_d (h_s - h_t)^2 = 2 (h_s - h_t) / (d * positions)
    expected_h = 2 * (h_s.detach() - h_t) / (6 * mask.sum()) * mask[..., None]
    assert torch.allclose(h_s.grad, expected_h, atol=1e-6)


def test_distillation_loss_ignores_masked_label_positions():
    z_s, z_t = torch.randn(2, 3, 10), torch.randn(2, 3, 10)
    h = torch.randn(2, 4, 8)
    mask = torch.tensor([[True, False, False], [True, True, False]])
    full, _ = distillation_loss(z_s, z_t, h, h, torch.ones(2, 4), 1.0, mask)
    z_t2 = z_t.clone()
    z_t2[0, 1:] += 100  # only masked-out positions change
    again, _ = distillation_loss(z_s, z_t2, h, h, torch.ones(2, 4), 1.0, mask)
    assert full.item() == pytest.approx(again.item())


# ---------------------------------------------------------------- PEFT construction


def shared_prompt_file(tmp_path, num_tasks=3, rank=2, d=32) -> tuple[str, dict]:
    torch.manual_seed(1)
    tensors = {"prompt_embeddings": torch.randn(L, d), "prefix_task_cols": torch.randn(num_tasks, L, rank),
               "prefix_task_rows": torch.randn(num_tasks, rank, d)}
    path = SharedPrompt(tensors, {}).save(tmp_path / "shared_prompt.safetensors")
    return str(path), tensors


@pytest.mark.parametrize("rank", [1, 3])
def test_target_start_with_ones_equals_the_shared_prompt(bert_dir, tmp_path, rank):
    path, tensors = shared_prompt_file(tmp_path)
    base = models.load_base_model(bert_dir, "SEQ_CLS", 2)
    model = models.multitask_model(base, "SEQ_CLS", L, 1, rank, path)
    encoder_ = model.prompt_encoder[models.ADAPTER]
    prompt = encoder_(torch.arange(L)[None], torch.tensor([0]))
    assert torch.allclose(prompt[0], tensors["prompt_embeddings"], atol=1e-6)
    assert models.count_trainable(model) == L * 32 + L * rank + rank * 32 + 2 * 32 + 2


def test_peft_loads_our_shared_prompt_itself(bert_dir, tmp_path):
    path, tensors = shared_prompt_file(tmp_path)
    for init in (MultitaskPromptTuningInit.ONLY_SOURCE_SHARED, MultitaskPromptTuningInit.AVERAGE_SOURCE_TASKS,
                 MultitaskPromptTuningInit.EXACT_SOURCE_TASK):
        config = MultitaskPromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=L, num_tasks=1,
                                             num_ranks=2, prompt_tuning_init=init,
                                             prompt_tuning_init_state_dict_path=path, num_transformer_submodules=1)
        model = get_peft_model(models.load_base_model(bert_dir, "SEQ_CLS", 2), config)
        loaded = model.prompt_encoder["default"]
        assert torch.equal(loaded.embedding.weight.detach(), tensors["prompt_embeddings"])
        if init == MultitaskPromptTuningInit.AVERAGE_SOURCE_TASKS:
            assert torch.allclose(loaded.prefix_task_cols[0], tensors["prefix_task_cols"].mean(0))


def test_pitfall_peft_default_init_erases_the_transfer(bert_dir, tmp_path):
    """Why u v^T is set to ones: PEFT's own N(0, 0.02) init scales P* by ~1e-3."""
    path, tensors = shared_prompt_file(tmp_path)
    config = MultitaskPromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=L, num_tasks=1, num_ranks=1,
                                         prompt_tuning_init=MultitaskPromptTuningInit.ONLY_SOURCE_SHARED,
                                         prompt_tuning_init_state_dict_path=path, num_transformer_submodules=1)
    model = get_peft_model(models.load_base_model(bert_dir, "SEQ_CLS", 2), config)
    prompt = model.prompt_encoder["default"](torch.arange(L)[None], torch.tensor([0]))
    assert prompt.abs().mean() < 0.01 * tensors["prompt_embeddings"].abs().mean()


def test_seq2seq_prompts_the_encoder_only(t5_dir):
    model = models.multitask_model(models.load_base_model(t5_dir, "SEQ_2_SEQ_LM"), "SEQ_2_SEQ_LM", L, 2, 1)
    assert model.prompt_encoder[models.ADAPTER].prefix_task_cols.shape == (2, L, 1)
    enc = encoder(t5_dir, "SEQ_2_SEQ_LM")
    data = small("sentiment")
    batch = enc(data.train[:2], data.label_words, task_id=1)
    assert model(**batch).loss.item() > 0
    out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         task_ids=batch["task_ids"], max_new_tokens=3)
    assert out.shape[0] == 2


# ---------------------------------------------------------------- the teacher pass


def trained_teacher(model_dir: str, task: str, steps: int = 3) -> tuple[Teacher, torch.nn.Module]:
    data = small(task)
    base = models.load_base_model(model_dir, "SEQ_CLS", data.num_labels, seed=7)
    model = models.prompt_tuning_model(base, "SEQ_CLS", L)
    with torch.no_grad():
        model.prompt_encoder[models.ADAPTER].embedding.weight.normal_()
        models.head_module(model).weight.normal_()
    head = models.head_module(model)
    return Teacher(task, models.prompt_tensor(model), head.weight.detach().clone(), head.bias.detach().clone()), model


def test_teacher_pass_on_the_student_equals_the_real_teacher(bert_dir):
    """functional_call with the teacher's prompt and head reproduces the teacher model exactly."""
    sources = [small("sentiment"), small("nli")]
    pairs = [trained_teacher(bert_dir, d.name) for d in sources]
    teachers = [t for t, _ in pairs]
    slices = label_slices(sources)
    student = models.multitask_model(models.load_base_model(bert_dir, "SEQ_CLS", slices[-1].stop), "SEQ_CLS", L, 2, 1)
    init_student(student, teachers, slices)
    with torch.no_grad():  # make the student differ from both teachers
        student.prompt_encoder[models.ADAPTER].prefix_task_rows.mul_(3.0)
    student.eval()
    enc = encoder(bert_dir)
    for k, ((teacher, teacher_model), data) in enumerate(zip(pairs, sources)):
        batch = enc(data.validation[:4], data.label_words, task_id=k, label_offset=slices[k].start)
        overrides = teacher_overrides(student, teacher, slices[k])
        inputs = {key: v for key, v in batch.items() if key != "labels"}
        via_student = torch.func.functional_call(student, overrides, args=(), kwargs=inputs, strict=False)
        teacher_model.eval()
        direct = teacher_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        assert torch.allclose(via_student.logits[:, slices[k]], direct.logits, atol=1e-5)
        loss, parts = distill_step_loss(student, batch, overrides, task_type="SEQ_CLS", num_virtual_tokens=L,
                                        label_slice=slices[k], lambda_=1.0, temperature=2.0)
        assert parts["loss_logits"] > 0 and parts["loss_hidden"] > 0
        loss.backward()
        rows = student.prompt_encoder[models.ADAPTER].prefix_task_rows.grad
        assert rows[k].abs().sum() > 0 and rows[1 - k].abs().sum() == 0  # only task k's update moves
        student.zero_grad()


def test_student_init_starts_at_the_mean_teacher(bert_dir):
    sources = [small("sentiment"), small("topic")]
    teachers = [trained_teacher(bert_dir, d.name)[0] for d in sources]
    slices = label_slices(sources)
    assert [(s.start, s.stop) for s in slices] == [(0, 2), (2, 6)]
    student = models.multitask_model(models.load_base_model(bert_dir, "SEQ_CLS", 6), "SEQ_CLS", L, 2, 1)
    init_student(student, teachers, slices)
    tensors = student_tensors(student)
    assert torch.allclose(tensors["prompt_embeddings"], (teachers[0].prompt + teachers[1].prompt) / 2)
    assert torch.allclose(models.head_module(student).weight[2:6], teachers[1].head_weight)
    assert set(tensors) == {"prompt_embeddings", "prefix_task_cols", "prefix_task_rows"}


# ---------------------------------------------------------------- the loop


def test_fit_lowers_the_loss_and_reports_each_eval(bert_dir):
    data = small("sentiment")
    model = models.prompt_tuning_model(models.load_base_model(bert_dir, "SEQ_CLS", 2), "SEQ_CLS", L)
    enc = encoder(bert_dir)
    fixed = enc(data.train[:8], data.label_words)  # a batch a random tiny model can still memorise
    evals, losses = [], []

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return task_loss(model, fixed, "SEQ_CLS").item()

    before = eval_loss()
    fit(model, lambda step: task_loss(model, fixed, "SEQ_CLS"), steps=30, lr=0.3, head_lr=0.05, weight_decay=0.0,
        eval_every=10, evaluate=lambda: evaluate(model, data, "validation", enc),
        on_step=lambda s, v: losses.append(v), on_eval=lambda s, m, state: evals.append((s, m)))
    after = eval_loss()
    assert len(losses) == 30 and [s for s, _ in evals] == [10, 20, 30]
    assert set(evals[-1][1]) == {"train_loss_avg", "eval_accuracy"}
    assert after < before - 0.05, (before, after)


def test_batch_stream_shards_are_disjoint():
    data = small("topic")
    a = {ex for batch in [next(batch_stream(data.train, 64, 0, 0, 2))] for ex in batch}
    b = {ex for batch in [next(batch_stream(data.train, 64, 0, 1, 2))] for ex in batch}
    assert a and b and not (a & b)


def test_head_only_trains_only_the_head(bert_dir):
    model = models.head_only_model(models.load_base_model(bert_dir, "SEQ_CLS", 3))
    assert models.count_trainable(model) == 3 * 32 + 3


def test_missing_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(models.ModelError, match="no such directory"):
        models.resolve_model_dir(ModelSpec(name_or_path=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(models.ModelError, match="no config.json"):
        models.resolve_model_dir(ModelSpec(name_or_path=str(tmp_path / "empty")))


def test_shared_prompt_keys_are_peft_keys(tmp_path):
    path, _ = shared_prompt_file(tmp_path)
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        assert set(f.keys()) == {"prompt_embeddings", "prefix_task_cols", "prefix_task_rows"}
