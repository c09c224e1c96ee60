"""When the baseline sweeps train beside the distillation and how many trials each may run then
(``resources.baseline_trials_beside_distill``): on a Ray of fixed size they must leave the distillation
its CPUs, or wait for it. No Ray cluster is started."""

from __future__ import annotations

import pytest
from helpers.specs import ROOT

from orchestrator.spec.loading import load_spec
from orchestrator.pipeline.resources import baseline_trials_beside_distill

DEMO = ROOT / "pipelines" / "demo.yaml"  # targets review_polarity, topic_match; trials of 1 CPU


def spec(*sets: str):
    return load_spec(DEMO, list(sets))


def test_the_demo_on_two_cpus_starts_the_baselines_after_its_three_distillations():
    # the 3 seeds' distillations at half a CPU each leave half a CPU: no trial of 1 CPU fits beside them
    assert baseline_trials_beside_distill(spec(), {"CPU": 2.0}, 3) == {"review_polarity": 0, "topic_match": 0}
    one = spec("distill.resources={num_workers: 1, cpus_per_worker: 1}")
    assert baseline_trials_beside_distill(one, {"CPU": 2.0}, 1) == {"review_polarity": 1, "topic_match": 0}


@pytest.mark.parametrize(("cpus", "distillations"), [(2, 1), (3, 1), (4, 1), (5, 1), (16, 1), (16, 3), (6, 3), (3, 3)])
def test_the_sweeps_leave_every_distillation_its_cpus_and_take_the_rest(cpus, distillations):
    s = spec("distill.resources={num_workers: 1, cpus_per_worker: 2}")
    got = baseline_trials_beside_distill(s, {"CPU": float(cpus)}, distillations)
    free = max(0, cpus - 2 * distillations)
    assert sum(got.values()) == free  # every CPU the distillations leave, and no more
    assert max(got.values()) - min(got.values()) <= 1  # shared out evenly, the first target first
    assert list(got.values()) == sorted(got.values(), reverse=True)


def test_fractional_cpus_and_several_workers():
    # 1 - 3 x 0.2 leaves 0.4 CPU: 2 trials of 0.2, one per target (not one in all, from 1.999...)
    s = spec("distill.resources={num_workers: 3, cpus_per_worker: 0.2}",
             "target.resources={num_workers: 1, cpus_per_worker: 0.2}")
    assert baseline_trials_beside_distill(s, {"CPU": 1.0}, 1) == {"review_polarity": 1, "topic_match": 1}


def test_the_spec_cap_still_holds():
    s = spec("target.max_concurrent_trials=2")
    assert baseline_trials_beside_distill(s, {"CPU": 64.0}, 1) == {"review_polarity": 2, "topic_match": 2}
    assert baseline_trials_beside_distill(s, {"CPU": 2.0}, 1) == {"review_polarity": 1, "topic_match": 0}


def test_gpu_trials_count_gpus():
    # CPUs to spare, but the distillation holds the only GPU: the GPU trials must wait
    s = spec("distill.resources={num_workers: 1, cpus_per_worker: 1, gpus_per_worker: 1}",
             "target.resources={num_workers: 1, cpus_per_worker: 1, gpus_per_worker: 1}")
    assert baseline_trials_beside_distill(s, {"CPU": 16.0, "GPU": 1.0}, 1) == {"review_polarity": 0, "topic_match": 0}
    assert baseline_trials_beside_distill(s, {"CPU": 16.0, "GPU": 5.0}, 1) == {"review_polarity": 2, "topic_match": 2}
