"""Few-shot training sets: balanced, drawn per seed, the same for every method of a seed; and a
budget a class cannot fill is refused before anything runs."""

from __future__ import annotations

from collections import Counter

import pytest
from helpers.specs import SMOKE

from orchestrator.cli import main
from orchestrator.data import FULL, budget_problem, few_shot, load_task
from orchestrator.spec.schema import TaskSpec


@pytest.fixture(scope="module")
def topic():
    return load_task(TaskSpec(name="topic", max_train_examples=200, max_eval_examples=40), 0)  # 4 classes


@pytest.mark.parametrize("shots", [1, 4, 16])
def test_every_class_gets_exactly_its_budget(topic, shots):
    drawn = few_shot(topic, shots, seed=0)
    assert Counter(ex.label for ex in drawn) == {label: shots for label in range(topic.num_labels)}
    assert all(ex in topic.train for ex in drawn)


def test_seeds_draw_different_subsets_and_a_seed_always_draws_the_same(topic):
    first, again, other = few_shot(topic, 8, 0), few_shot(topic, 8, 0), few_shot(topic, 8, 1)
    assert first == again  # every method of one seed trains on these examples
    assert set(map(id, first)) != set(map(id, other))


def test_full_is_the_whole_training_set(topic):
    assert few_shot(topic, FULL, 3) is topic.train
    assert budget_problem(topic, FULL) is None


def test_a_budget_larger_than_a_class_is_named(topic):
    smallest = min(Counter(ex.label for ex in topic.train).values())
    assert budget_problem(topic, smallest) is None
    problem = budget_problem(topic, smallest + 1)
    assert problem and f"{smallest + 1} shots per class" in problem


def test_run_refuses_a_budget_a_class_cannot_fill_before_any_compute(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["run", str(SMOKE), "--set", "target.shots=[4, 500]", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "target.shots" in err and "500 shots per class" in err and "review_polarity" in err
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "ray_results").exists()  # nothing created
