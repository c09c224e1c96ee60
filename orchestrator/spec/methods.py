"""The target methods, one entry each: what every other module reads instead of testing method names.

MPT is the reference every other method is compared against. The baselines are the linear probe,
vanilla prompt tuning and SPoT (one run per source prompt); two ablations train MPT's own target
model from another starting prompt, to measure what distillation (``no_distill``) and the teachers
(``joint_multitask``) add. Adding a method is one entry here plus its model code: the ``model`` kind's
build, save and load in ``orchestrator/method/targets.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

StartingPoint = Literal["shared_prompt", "mean_of_teachers", "joint_student", "teacher_prompt", "random", "none"]
# P* times u v^T of a searched rank (PEFT's multitask prompt tuning); a PEFT prompt; a classifier head
ModelKind = Literal["multitask", "prompt", "head"]
Upstream = Literal["distill", "sources", "joint"]  # the stages whose results a method's trials start from

PROMPT_KEYS = ("lr", "head_lr", "batch_size", "weight_decay")


@dataclass(frozen=True)
class TargetMethod:
    name: str
    help: str  # what it is, for the spec's help text
    starts_from: StartingPoint
    model: ModelKind
    searches: tuple[str, ...]  # the search-space keys its trials take (rank belongs to MPT's target model alone)
    needs: frozenset[Upstream]
    per_source: bool = False  # one method per source task, named "<name>:<task>"
    needs_classifier_head: bool = False  # so not for a text-to-text model


REFERENCE = "mpt"
MPT_KEYS = ("rank", *PROMPT_KEYS)
METHODS = {m.name: m for m in (
    TargetMethod("mpt", help="the shared prompt P* with a rank-r u v^T, from the distillation",
                 starts_from="shared_prompt", model="multitask", searches=MPT_KEYS, needs=frozenset({"distill"})),
    TargetMethod("head_only", help="the linear probe of the frozen model",
                 starts_from="none", model="head", searches=("head_lr", "batch_size", "weight_decay"),
                 needs=frozenset(), needs_classifier_head=True),
    TargetMethod("vanilla_pt", help="a random prompt",
                 starts_from="random", model="prompt", searches=PROMPT_KEYS, needs=frozenset()),
    TargetMethod("single_source", help="one run per source prompt, SPoT",
                 starts_from="teacher_prompt", model="prompt", searches=PROMPT_KEYS, needs=frozenset({"sources"}),
                 per_source=True),
    TargetMethod("no_distill", help="MPT's model from the mean of the teacher prompts, not distilled",
                 starts_from="mean_of_teachers", model="multitask", searches=MPT_KEYS, needs=frozenset({"sources"})),
    TargetMethod("joint_multitask", help="MPT's model from a student trained on the sources' task loss only, no "
                 "teachers: its own Ray Train job",
                 starts_from="joint_student", model="multitask", searches=MPT_KEYS, needs=frozenset({"joint"})),
)}
BASELINES = tuple(name for name in METHODS if name != REFERENCE)  # the methods a spec may list beside MPT


def family(method: str) -> str:
    """A trial's method without its source task: ``single_source:nli`` is ``single_source``."""
    return method.split(":", 1)[0]


def method_of(method: str) -> TargetMethod:
    """The entry of a trial's method (``single_source:nli`` included)."""
    return METHODS[family(method)]


def source_of(method: str) -> str:
    """The source task a per-source method starts from: ``single_source:nli`` -> ``nli``."""
    return method.split(":", 1)[1]


def expand(baselines: list[str], sources: list[str]) -> list[str]:
    """The methods a baselines sweep runs: a per-source method once per source task."""
    return [m for m in baselines if not METHODS[m].per_source] + \
        [f"{m}:{s}" for m in baselines if METHODS[m].per_source for s in sources]


def upstream(methods: list[str]) -> set[str]:
    """The stages whose results ``methods``' trials start from."""
    return set().union(*(method_of(m).needs for m in methods))
