"""orchestrator.method.distill: the distillation loss, the teacher pass through the student, the
student's start and the shared prompt's file."""

from __future__ import annotations

import pytest
import torch
from helpers.models import L, encoder, shared_prompt_file, small

from orchestrator.method import models
from orchestrator.method.distill import (
    Teacher,
    distill_step_loss,
    distillation_loss,
    init_student,
    label_slices,
    student_tensors,
    teacher_overrides,
)

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


def test_shared_prompt_keys_are_peft_keys(tmp_path):
    path, _ = shared_prompt_file(tmp_path)
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        assert set(f.keys()) == {"prompt_embeddings", "prefix_task_cols", "prefix_task_rows"}


def test_t5_teacher_pass_equals_the_real_teacher_and_prompts_the_encoder_only(t5_dir):
    """Text-to-text: functional_call with a teacher's prompt reproduces that teacher's own PEFT model,
    and neither the teacher pass nor the student puts virtual tokens in the decoder's inputs."""
    sources = [small("sentiment"), small("nli")]
    teachers, teacher_models = [], []
    for data in sources:
        base = models.load_base_model(t5_dir, "SEQ_2_SEQ_LM", seed=7)
        model = models.prompt_tuning_model(base, "SEQ_2_SEQ_LM", L)
        with torch.no_grad():
            model.prompt_encoder[models.ADAPTER].embedding.weight.normal_()
        teachers.append(Teacher(data.name, models.prompt_tensor(model)))
        teacher_models.append(model.eval())
    student = models.multitask_model(models.load_base_model(t5_dir, "SEQ_2_SEQ_LM"), "SEQ_2_SEQ_LM", L, 2, 1)
    init_student(student, teachers, [None, None])
    with torch.no_grad():  # make the student differ from both teachers
        student.prompt_encoder[models.ADAPTER].prefix_task_rows.mul_(3.0)
    student.eval()
    enc = encoder(t5_dir, "SEQ_2_SEQ_LM")
    for k, (teacher, teacher_model, data) in enumerate(zip(teachers, teacher_models, sources)):
        batch = enc(data.validation[:4], data.label_words, task_id=k)
        overrides = teacher_overrides(student, teacher, None)
        via_student = torch.func.functional_call(student, overrides, args=(),
                                                 kwargs={**batch, "output_hidden_states": True}, strict=False)
        direct = teacher_model(**{key: v for key, v in batch.items() if key != "task_ids"}, output_hidden_states=True)
        assert torch.allclose(via_student.logits, direct.logits, atol=1e-5)
        assert torch.allclose(via_student.encoder_last_hidden_state, direct.encoder_last_hidden_state, atol=1e-5)
        own = student(**batch, output_hidden_states=True)
        assert not torch.allclose(own.logits, direct.logits, atol=1e-3)  # the override really changed the pass
        labels = batch["labels"].shape[1]
        for out in (via_student, direct, own):
            assert out.encoder_last_hidden_state.shape[1] == batch["input_ids"].shape[1] + L  # prompted encoder
            assert out.decoder_hidden_states[-1].shape[1] == labels  # no virtual token in the decoder
        loss, parts = distill_step_loss(student, batch, overrides, task_type="SEQ_2_SEQ_LM", num_virtual_tokens=L,
                                        label_slice=None, lambda_=1.0, temperature=2.0)
        assert parts["loss_logits"] > 0 and parts["loss_hidden"] > 0 and torch.isfinite(loss)
