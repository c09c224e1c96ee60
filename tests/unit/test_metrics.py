"""compute_metric (orchestrator.method.metrics): known values and bad input."""

from __future__ import annotations

import pytest

from orchestrator.method.metrics import compute_metric


def test_compute_metric_known_values():
    assert compute_metric("accuracy", [0, 1, 1, 0], [0, 1, 0, 0]) == pytest.approx(0.75)
    # class 0: P=1/2 R=1 F=2/3; class 1: P=1 R=2/3 F=4/5; macro = 11/15
    assert compute_metric("f1", [0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(11 / 15)
    assert compute_metric("mcc", [1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    assert compute_metric("mcc", [0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)
    assert compute_metric("mcc", [1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.0)
    assert isinstance(compute_metric("accuracy", (1,), (1,)), float)


@pytest.mark.parametrize("args, match", [
    (("auc", [0], [0]), "unknown metric"),
    (("accuracy", [0, 1], [0]), "2 predictions for 1 labels"),
    (("f1", [], []), "no examples"),
])
def test_compute_metric_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        compute_metric(*args)
