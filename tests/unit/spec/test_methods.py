"""orchestrator/spec/methods.py, the one table of target methods: its entries are consistent with the
search space and the spec, no other module tests a method's name, and a new entry is honoured by the
search space, the graph's upstream stages and the model code without another change."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch
from helpers.models import L, encoder, small

from orchestrator.method.targets import build_target_model, load_trial_model, save_trial_model, task_id_of
from orchestrator.spec import methods
from orchestrator.spec.methods import BASELINES, METHODS, REFERENCE, expand, family, method_of, upstream
from orchestrator.spec.schema import TargetStage
from orchestrator.spec.search import TUNABLE, SearchSpace

PACKAGE = Path(methods.__file__).resolve().parents[1]


def test_every_entry_searches_known_keys_and_lr_or_head_lr():
    for m in METHODS.values():
        assert set(m.searches) <= set(TUNABLE), m.name
        assert {"lr", "head_lr"} & set(m.searches), m.name  # something to tune
        assert ("rank" in m.searches) == (m.model == "multitask"), m.name  # rank is the u v^T's


def test_the_reference_is_mpt_from_the_distillation_and_not_a_baseline():
    assert REFERENCE not in BASELINES and set(BASELINES) | {REFERENCE} == set(METHODS)
    assert method_of(REFERENCE).needs == {"distill"} and method_of(REFERENCE).starts_from == "shared_prompt"


def test_the_spec_accepts_every_baseline_and_refuses_another_name():
    assert TargetStage(baselines=list(BASELINES)).baselines == list(BASELINES)
    with pytest.raises(ValueError, match="vanila_pt"):
        TargetStage(baselines=["vanila_pt"])
    with pytest.raises(ValueError):
        TargetStage(baselines=[REFERENCE])  # MPT always runs; it is not a baseline


def test_per_source_methods_expand_once_per_source():
    assert expand(["single_source", "head_only"], ["nli", "topic"]) == ["head_only", "single_source:nli",
                                                                        "single_source:topic"]
    assert family("single_source:nli") == "single_source" and method_of("single_source:nli").per_source


def test_upstream_stages_are_what_the_methods_start_from():
    assert upstream([]) == set()
    assert upstream([REFERENCE]) == {"distill"}
    assert upstream(["head_only", "vanilla_pt"]) == set()
    assert upstream(["single_source:nli", "no_distill"]) == {"sources"}
    assert upstream(["joint_multitask"]) == {"joint"}


def method_name_tests(path: Path) -> list[str]:
    """Comparisons of a value with a method's name (``x == "head_only"``, ``m in ("mpt", ...)``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            literals = [c.value for o in operands for c in ([o] if isinstance(o, ast.Constant) else
                        getattr(o, "elts", [])) if isinstance(c, ast.Constant)]
            found += [f"{path}:{node.lineno} {v!r}" for v in literals if v in METHODS]
    return found


def test_no_module_but_the_table_tests_a_method_name():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) if path.name != "methods.py"
             for hit in method_name_tests(path)]
    assert found == []


def test_the_scan_finds_a_method_name_test(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('def f(m):\n    return m == "head_only" or m in ("vanilla_pt", "other")\n')
    assert len(method_name_tests(sample)) == 2


def test_a_new_entry_is_searched_built_saved_and_loaded_with_no_other_change(monkeypatch, bert_dir, tmp_path):
    """What adding a baseline takes beyond its model code: here a prompt method that starts from a random
    prompt and does not search head_lr, entered in the table alone."""
    entry = dataclasses.replace(METHODS["vanilla_pt"], name="random_prompt_fixed_head", help="a test entry",
                                searches=("lr", "batch_size", "weight_decay"))
    monkeypatch.setitem(METHODS, entry.name, entry)
    assert SearchSpace.method_keys(entry.name) == ("lr", "batch_size", "weight_decay")
    space = SearchSpace({"rank": {"grid": [1, 2]}, "lr": {"grid": [0.1, 0.2]}, "head_lr": {"grid": [0.1, 0.3]}})
    assert space.trial_count([entry.name], num_samples=1) == 2  # neither rank nor head_lr multiplies its grid
    assert upstream([entry.name]) == set() and task_id_of(entry.name) is None

    workdir = tmp_path / "work"
    workdir.mkdir()
    model = build_target_model(entry.name, 1, bert_dir, "SEQ_CLS", L, 2, 0, None, {}, workdir)
    assert hasattr(model, "prompt_encoder")
    saved = tmp_path / "saved"
    saved.mkdir()
    save_trial_model(model, entry.name, saved)
    loaded = load_trial_model(entry.name, bert_dir, "SEQ_CLS", 2, 0, str(saved))
    data = small("review_polarity")
    batch = encoder(bert_dir)(data.validation[:2], data.label_words, task_id=None)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(**inputs).logits, model(**inputs).logits, atol=1e-5)
