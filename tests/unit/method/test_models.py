"""orchestrator.method.models: base models, the PEFT model of each stage, and how PEFT reads our
shared prompt (the distilled P*, u and v)."""

from __future__ import annotations

import pytest
import torch
from helpers.models import L, encoder, shared_prompt_file, small
from peft import MultitaskPromptTuningConfig, MultitaskPromptTuningInit, TaskType, get_peft_model

from orchestrator.method import models
from orchestrator.spec.schema import ModelSpec


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


def test_head_only_trains_only_the_head(bert_dir):
    model = models.head_only_model(models.load_base_model(bert_dir, "SEQ_CLS", 3))
    assert models.count_trainable(model) == 3 * 32 + 3


def test_missing_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(models.ModelError, match="no such directory"):
        models.resolve_model_dir(ModelSpec(name_or_path=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(models.ModelError, match="no config.json"):
        models.resolve_model_dir(ModelSpec(name_or_path=str(tmp_path / "empty")))


def test_hub_revision_is_read_from_the_local_cache(tmp_path, monkeypatch, bert_dir):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert models.hub_revision("google-t5/t5-base") is None  # not cached: unknown, and no network asked
    ref = tmp_path / "models--google-t5--t5-base" / "refs" / "main"
    ref.parent.mkdir(parents=True)
    ref.write_text("a" * 40 + "\n")
    assert models.hub_revision("google-t5/t5-base") == "a" * 40
    assert models.hub_revision(bert_dir) is None  # a local model has no revision
