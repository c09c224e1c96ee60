"""The target sweeps' search space: the spec's small language for it, checked, and turned into
Ray Tune's (imported only when a sweep or a test asks for it, so a spec loads without Ray)."""

from __future__ import annotations

import difflib
import math
import random
from typing import Any

from pydantic import Field, RootModel, field_validator

from .methods import method_of

TUNABLE = ("rank", "lr", "head_lr", "batch_size", "weight_decay")

BASELINE_KEY = "baseline"  # a multi-method sweep's grid over methods: one dict of settings per method
SAMPLE_KEY = "sample"  # a sweep's grid over its draws of the random domains, shared by seeds and methods


class SearchSpace(RootModel[dict[str, Any]]):
    """The target sweeps' search space, written in the spec's own small language, and the one place
    that turns it into Tune's: what each method's trials vary, the Tune param space and the trial
    count (``plan`` announces exactly what Tune then runs)."""

    root: dict[str, Any] = Field(default_factory=lambda: {"rank": {"grid": [1, 2]}, "lr": {"loguniform": [0.01, 0.3]}})

    @field_validator("root")
    @classmethod
    def _check(cls, space: dict[str, Any]) -> dict[str, Any]:
        problems = []
        if not space:
            problems.append("is empty; name at least rank and lr, e.g. {rank: {grid: [1]}, lr: {grid: [0.1]}}")
        for key, dom in space.items():
            if key not in TUNABLE:
                near = difflib.get_close_matches(key, TUNABLE, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                problems.append(f"unknown key {key!r}{hint}; tunable keys are {', '.join(TUNABLE)}")
                continue
            try:
                values = _domain_values(dom)
            except ValueError as err:
                problems.append(f"{key}: {err}")
                continue
            for v in values:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    problems.append(f"{key}: value {v!r} is not a number")
                elif key in ("rank", "batch_size") and (v != int(v) or v <= 0):
                    problems.append(f"{key}: value {v!r} must be a positive integer")
                elif key in ("lr", "head_lr") and v <= 0:
                    problems.append(f"{key}: value {v!r} must be > 0")
                elif key == "weight_decay" and v < 0:
                    problems.append(f"weight_decay: value {v!r} must be >= 0")
        if problems:
            raise ValueError("; ".join(problems))
        return space

    @staticmethod
    def method_keys(method: str) -> tuple[str, ...]:
        """The settings a method's trials take (its entry's ``searches``), in the order of ``TUNABLE``."""
        return tuple(k for k in TUNABLE if k in method_of(method).searches)

    def trial_count(self, methods: list[str], num_samples: int, seeds: int = 1) -> int:
        """How many trials Tune runs for one sweep over ``methods``, every configuration at ``seeds`` seeds."""
        def grid_points(method: str) -> int:
            sizes = [len(d["grid"]) for k, d in self.root.items()
                     if k in self.method_keys(method) and isinstance(d, dict) and "grid" in d]
            return math.prod(sizes)

        return num_samples * seeds * sum(grid_points(m) for m in methods)

    def tune_space(self, methods: list[str], defaults: dict[str, Any], seeds: list[int], shots: int | str,
                   num_samples: int = 1, draw_seed: int = 0) -> dict[str, Any]:
        """Tune's param space for one sweep over ``methods`` at one training-set budget (``shots``);
        ``defaults`` fill the keys not searched, and every configuration runs once per seed. Run it
        with Tune's own ``num_samples`` at 1: the space holds the samples.

        The random domains (choice, uniform, loguniform) are drawn here, ``num_samples`` times from
        ``draw_seed``, and enter as a grid over those draws (``SAMPLE_KEY``): Tune would draw them
        afresh for every trial, so each seed of a "configuration" would train another one, and the
        baselines sweep other values than MPT's. Several methods make one grid over methods
        (``BASELINE_KEY``), each with its own settings, so that a setting a method does not take is
        not searched for it.
        """
        from ray import tune

        drawn = [k for k, v in self.root.items() if _is_random(v)]
        rng = random.Random(draw_seed)
        draws = [{k: _draw(self.root[k], rng) for k in drawn} for _ in range(num_samples)]
        space = {**{k: v for k, v in defaults.items() if k not in drawn},
                 **{k: _tune_domain(v) for k, v in self.root.items() if k not in drawn}}
        fixed = {"seed": tune.grid_search(seeds), "shots": shots, SAMPLE_KEY: tune.grid_search(draws)}
        if len(methods) == 1:
            return {**{k: space[k] for k in self.method_keys(methods[0]) if k in space}, "method": methods[0], **fixed}
        common = [k for k in TUNABLE if k in space and all(k in self.method_keys(m) for m in methods)]
        variants = [{"method": m, **{k: space[k] for k in self.method_keys(m) if k in space and k not in common}}
                    for m in methods]
        return {**{k: space[k] for k in common}, BASELINE_KEY: tune.grid_search(variants), **fixed}

    @classmethod
    def trial_settings(cls, config: dict[str, Any]) -> dict[str, Any]:
        """A trial's config with its method's settings and its draw of the random domains merged
        in: method, rank, lr, head_lr, seed, ..."""
        settings = {**{k: v for k, v in config.items() if k not in (BASELINE_KEY, SAMPLE_KEY)},
                    **config.get(BASELINE_KEY, {})}
        keys = cls.method_keys(settings.get("method", ""))
        return {**settings, **{k: v for k, v in config.get(SAMPLE_KEY, {}).items() if k in keys}}

    @staticmethod
    def configuration(settings: dict[str, Any]) -> str:
        """What one configuration's trials share across seeds (method and searched values), as a key."""
        return ",".join(f"{k}={settings[k]}" for k in ("method", *TUNABLE) if settings.get(k) not in (None, ""))


def _domain_values(dom: Any) -> list[Any]:
    """The values a domain spans (bounds for ranges), for validation only."""
    if isinstance(dom, dict):
        if len(dom) != 1:
            raise ValueError(f"a domain has exactly one of grid/choice/uniform/loguniform, got {sorted(dom)}")
        (kind, arg), = dom.items()
        if kind in ("grid", "choice"):
            if not isinstance(arg, list) or not arg:
                raise ValueError(f"{kind} needs a non-empty list")
            return arg
        if kind in ("uniform", "loguniform"):
            if not isinstance(arg, list) or len(arg) != 2:
                raise ValueError(f"{kind} needs [low, high]")
            if all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in arg) and arg[0] >= arg[1]:
                raise ValueError(f"{kind} needs low < high")
            return arg
        raise ValueError(f"unknown domain {kind!r}; use grid, choice, uniform or loguniform")
    if isinstance(dom, list):
        raise ValueError("a bare list is ambiguous; write {grid: [...]} or {choice: [...]}")
    return [dom]


def _is_random(domain: Any) -> bool:
    return isinstance(domain, dict) and next(iter(domain)) in ("choice", "uniform", "loguniform")


def _draw(domain: dict[str, Any], rng: random.Random) -> Any:
    """One value of a random domain, as Tune's choice, uniform and loguniform draw it."""
    ((kind, arg),) = domain.items()
    if kind == "choice":
        return rng.choice(arg)
    if kind == "uniform":
        return rng.uniform(*arg)
    return math.exp(rng.uniform(math.log(arg[0]), math.log(arg[1])))


def _tune_domain(domain: Any) -> Any:
    """A grid ({grid: [...]}) as Tune's grid search; a constant as itself (random domains are drawn
    by ``SearchSpace.tune_space``)."""
    if not isinstance(domain, dict):
        return domain
    from ray import tune  # only the target stage and the tests need Tune: a spec loads without Ray

    return tune.grid_search(domain["grid"])
