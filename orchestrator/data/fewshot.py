"""Few-shot training sets: ``shots`` examples of every class, drawn per seed (the paper's few-shot
setting). The draw depends on the task, the budget and the seed only, so every method of one seed
trains on the same examples and a different seed draws a different subset."""

from __future__ import annotations

import random
from collections import defaultdict

from .types import Example, TaskData, seed_int

FULL = "full"  # the budget that keeps the whole training set


def class_counts(data: TaskData) -> dict[str, int]:
    """Training examples per class name (0 for a class with none)."""
    counts = dict.fromkeys(data.label_names, 0)
    for ex in data.train:
        counts[data.label_names[ex.label]] += 1
    return counts


def few_shot(data: TaskData, shots: int | str, seed: int) -> list[Example]:
    """``shots`` training examples per class in a seeded random order, or the whole set for ``FULL``."""
    if shots == FULL:
        return data.train
    by_class: dict[int, list[Example]] = defaultdict(list)
    for ex in data.train:
        by_class[ex.label].append(ex)
    rng = random.Random(seed_int(data.name, shots, seed))
    drawn = [ex for label in sorted(by_class) for ex in rng.sample(by_class[label], int(shots))]
    rng.shuffle(drawn)
    return drawn


def budget_problem(data: TaskData, shots: int | str) -> str | None:
    """Why ``shots`` per class cannot be drawn from ``data`` (a class has fewer examples), or None."""
    if shots == FULL:
        return None
    short = {name: n for name, n in class_counts(data).items() if n < int(shots)}
    if short:
        return f"{shots} shots per class, but class(es) {short} have fewer training examples"
    return None
