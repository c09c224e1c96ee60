"""What every stage receives: the spec and where things live (picklable, passed to Ray tasks, Ray
Train workers and Tune trials alike)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ...data import TaskData, load_task
from ...method import models
from ...method.train import Encoder
from ...spec.schema import PipelineSpec
from ...tracking import TrackingContext
from ..cache import fingerprints


@dataclass(frozen=True)
class PipelineContext:
    spec: PipelineSpec
    model_dir: str
    tracking: TrackingContext
    storage: str
    run_tag: str  # unique per pipeline execution
    fingerprints: dict[str, str]
    forced: frozenset[str] = frozenset()  # stages run again whatever the cache holds
    local_ray: bool = False  # a Ray this run started itself: one node, no dashboard (cli.run)
    seed_label: str = ""  # "s1" in one seed's branch of a run whose seeds each train their own sources

    def tag(self, name: str) -> str:
        """A stage's name on the console and the progress display: ``source:topic s1`` in a branch of
        one seed among several, so that their lines and bars stay apart."""
        return f"{name} {self.seed_label}" if self.seed_label else name

    def job_name(self, key: str) -> str:
        """The Train/Tune run name of a stage. Ray resumes a run dir with the same name from its last
        checkpoint, which is what an interrupted pipeline started again wants; a forced stage gets a
        fresh dir instead."""
        stage = key.split(":")[0]
        name = f"{self.spec.name}-{key.replace(':', '-')}-{self.fingerprints[key]}"
        return f"{name}-{self.run_tag}" if stage in self.forced else name

    def for_seed(self, seed: int) -> PipelineContext:
        """The context of one seed's sources and distillation (``seed_scope: pipeline``): its own
        spec seed, so its own data draws, initialisation and fingerprints."""
        spec = self.spec.for_seed(seed)
        return dataclasses.replace(self, spec=spec, fingerprints=fingerprints(spec), seed_label=f"s{seed}")

    def load(self, task: str) -> TaskData:
        return load_task(self.spec.task(task), self.spec.seed)

    def encoder(self) -> Encoder:
        m = self.spec.model
        return Encoder(models.load_tokenizer(self.model_dir), m.task_type, m.max_length, m.max_target_length)
