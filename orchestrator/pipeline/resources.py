"""The resource arithmetic the pre-flight and the graph share: how many copies of a bundle fit in
what a node (or a Ray) offers, and so how many baseline trials may run beside the distillations."""

from __future__ import annotations

import math

from ..spec.schema import PipelineSpec

EPS = 1e-6  # Ray keeps resources in units of 1e-4; this only absorbs float noise


def bundles_that_fit(bundle: dict[str, float], offer: dict[str, float]) -> int:
    """How many copies of ``bundle`` fit in ``offer`` at once."""
    counts = [math.floor(float(offer.get(k, 0.0)) / v + EPS) for k, v in bundle.items() if v > 0]
    return max(0, min(counts)) if counts else 1_000_000


def baseline_trials_beside_distill(spec: PipelineSpec, cluster: dict[str, float], distillations: int) -> dict[str, int]:
    """How many trials each target's baseline sweep may run at once beside the distillations on a Ray
    of fixed size (``cluster``: its resources), so that they leave the distillations theirs. The
    trials that fit are shared out in the spec's target order; a target given none (0) must wait for
    the distillations.

    Tune keeps a finished trial's process and resources for its next trial, so a sweep holds what it
    once got until it ends. Uncapped baseline sweeps started beside the distillation take every free
    CPU first, and the distillation, whose job asks later, waits for them: 210 s of the demo's 615 s
    on 2 CPUs (bench/README.md), while its MPT sweeps, the last stage, wait for it.
    """
    distill, trial = spec.distill.resources, spec.target.resources
    left = {name: amount - distillations * distill.num_workers * distill.bundle().get(name, 0.0)
            for name, amount in cluster.items()}
    free = bundles_that_fit(trial.bundle(), left)
    share, extra = divmod(free, len(spec.targets))
    cap = spec.target.max_concurrent_trials or free
    return {task: min(share + (i < extra), cap) for i, task in enumerate(spec.targets)}
