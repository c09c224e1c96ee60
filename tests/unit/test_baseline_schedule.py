"""When the baseline sweeps train beside the distillation and how many trials each may run then
(``target.baseline_trials_beside_distill``): on a Ray of fixed size they must leave the distillation
its CPUs, or wait for it. No Ray cluster is started."""

from __future__ import annotations

import pytest
from helpers.specs import ROOT

from orchestrator.spec_loading import load_spec
from orchestrator.stages.target import baseline_trials_beside_distill

DEMO = ROOT / "pipelines" / "demo.yaml"


def spec(*sets: str):
    return load_spec(DEMO, list(sets))


def test_the_demo_on_two_cpus_waits_for_the_distillation():
    # the distillation takes both CPUs; with one of them, one left for two targets' sweeps is still too few
    assert baseline_trials_beside_distill(spec(), {"CPU": 2.0}, 1) == 0
    assert baseline_trials_beside_distill(spec("distill.resources={num_workers: 1, cpus_per_worker: 1}"),
                                          {"CPU": 2.0}, 1) == 0


@pytest.mark.parametrize(("cpus", "distillations", "beside"), [(4, 1, 1), (5, 1, 1), (6, 1, 2), (16, 1, 7),
                                                                (16, 3, 5), (6, 3, 0)])
def test_the_sweeps_leave_every_distillation_its_cpus(cpus, distillations, beside):
    got = baseline_trials_beside_distill(spec(), {"CPU": float(cpus)}, distillations)
    assert got == beside
    # two targets' sweeps at their cap and the distillations (2 CPUs each) fit; one trial more would not
    assert 2 * got + 2 * distillations <= cpus < 2 * (got + 1) + 2 * distillations


def test_fractional_cpus_and_several_workers():
    # 1 - 3 x 0.2 leaves 0.4 CPU: 2 trials of 0.2, one per target (not none, from 1.999...)
    s = spec("distill.resources={num_workers: 3, cpus_per_worker: 0.2}",
             "target.resources={num_workers: 1, cpus_per_worker: 0.2}")
    assert baseline_trials_beside_distill(s, {"CPU": 1.0}, 1) == 1


def test_the_spec_cap_still_holds():
    s = spec("target.max_concurrent_trials=2")
    assert baseline_trials_beside_distill(s, {"CPU": 64.0}, 1) == 2
    assert baseline_trials_beside_distill(s, {"CPU": 2.0}, 1) == 0


def test_gpu_trials_count_gpus():
    # CPUs to spare, but the distillation holds the only GPU: the GPU trials must wait
    s = spec("distill.resources={num_workers: 1, cpus_per_worker: 1, gpus_per_worker: 1}",
             "target.resources={num_workers: 1, cpus_per_worker: 1, gpus_per_worker: 1}")
    assert baseline_trials_beside_distill(s, {"CPU": 16.0, "GPU": 1.0}, 1) == 0
    assert baseline_trials_beside_distill(s, {"CPU": 16.0, "GPU": 5.0}, 1) == 2
