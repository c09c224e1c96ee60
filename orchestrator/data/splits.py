"""From raw splits to a :class:`~orchestrator.data.types.TaskData`: columns, labels, split rule, examples.

Labels: ``text_fields`` name one or two text columns and ``label_field`` the label column.
ClassLabel features give the names, string labels map to their sorted unique names, plain ints
``i`` are named ``str(i)``. Negative labels (GLUE hides test labels as -1) and rows with a missing
text or label are dropped.

Split rule (``split_rule: attempt``, from ATTEMPT): with no (labelled) test split, a small train
set (< 10,000) halves validation into validation/test, a large one holds out 1,000 train examples
as validation and uses the original validation as test. With neither validation nor test,
validation and test are 10% of train each. With test but no validation, validation is 10% of train
(1,000 when train is large). ``split_rule: none`` needs all three splits. All draws are seeded by
(task name, seed). Test is for the final report only: never select or tune on it.

pandas is imported inside the functions only, so importing the package stays cheap.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..spec.schema import TaskSpec
from .readers import RawSplit
from .types import ROLES, Example, TaskData, TaskDataError, fail, issue, label_words, nearest, seed_int

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SMALL_TRAIN = 10_000      # ATTEMPT: below this, halve validation into val/test
HELD_OUT_VAL = 1_000      # ATTEMPT: large sets hold out this many train examples as validation
CARVE_FRACTION = 0.1      # no validation/test at all: 10% of train each


def build(spec: TaskSpec, seed: int, parts: dict[str, RawSplit], class_names: list[str] | None) -> TaskData:
    """The task's examples from its raw splits, or :class:`TaskDataError` with every problem found."""
    _check_columns(spec, parts)
    frames = _clean_labels(spec, parts, class_names)
    frames = apply_split_rule(spec, seed, frames, {r: p.where for r, p in parts.items()})
    names, ids = _encode_labels(spec, frames, class_names)
    caps = {"train": spec.max_train_examples, "validation": spec.max_eval_examples, "test": spec.max_eval_examples}
    splits = {}
    for role, frame in frames.items():
        frame = frame.sample(frac=1.0, random_state=seed_int(spec.name, seed, "shuffle", role) % 2**32)
        splits[role] = _examples(spec, frame.iloc[: caps[role]], ids)
    return TaskData(spec.name, names, label_words(spec, names), splits["train"], splits["validation"],
                    splits["test"], spec.metric)


def _check_columns(spec: TaskSpec, parts: dict[str, RawSplit]) -> None:
    issues = []
    for role, part in parts.items():
        if part.rows == 0:
            issues.append(issue(spec, "", f"the {role} split ({part.where}) is empty",
                                "add examples to it, or remove it and let split_rule carve it"))
            continue
        for attr, needed in (("text_fields", spec.text_fields), ("label_field", [spec.label_field])):
            for column in needed:
                if column not in part.columns:
                    issues.append(issue(spec, f".{attr}", f"column {column!r} is missing from the {role} split "
                                        f"({part.where}); its columns are {part.columns}",
                                        f"{nearest(column, part.columns)}set {attr} to existing column(s)", column))
    if issues:
        raise TaskDataError(spec.name, issues)


def _as_int(value: Any) -> Any:
    """True -> 1, 3.0 -> 3 (pandas turns int columns with gaps into floats); anything else unchanged."""
    if isinstance(value, bool) or (isinstance(value, float) and value.is_integer()):
        return int(value)
    return value


def _normalize_labels(series: pd.Series) -> pd.Series:
    """Labels as Python ints where every value is integral (bools, 1.0), else as strings."""
    import pandas as pd

    values = [_as_int(v.item() if hasattr(v, "item") else v) for v in series.tolist()]
    if not all(isinstance(v, int) for v in values):
        values = [str(v) for v in values]
    return pd.Series(values, index=series.index, dtype=object)


def _clean_labels(spec: TaskSpec, parts: dict[str, RawSplit], class_names: list[str] | None) -> dict[str, pd.DataFrame]:
    """Drop rows with a missing text/label or a negative (hidden) label; unlabelled val/test count as absent."""
    frames, issues = {}, []
    for role, part in parts.items():
        frame = part.frame.dropna(subset=[*spec.text_fields, spec.label_field])
        if len(frame) < len(part.frame):
            log.warning("task %s: dropped %d %s rows with a missing text or label (%s)",
                        spec.name, len(part.frame) - len(frame), role, part.where)
        frame = frame.assign(**{spec.label_field: _normalize_labels(frame[spec.label_field])})
        labels = frame[spec.label_field]
        hidden = labels.map(lambda v: isinstance(v, int) and v < 0).astype(bool)
        frame = frame[~hidden]
        if frame.empty and role != "train" and spec.split_rule == "attempt":
            log.warning("task %s: the %s split (%s) has no labels; split_rule attempt replaces it",
                        spec.name, role, part.where)
            continue
        if frame.empty:
            issues.append(issue(spec, "", f"the {role} split ({part.where}) has no labelled examples "
                                "(labels missing or negative, as in GLUE test sets)",
                                "use a labelled split; with split_rule: attempt an unlabelled validation/test "
                                "is replaced from the other splits"))
            continue
        if class_names is not None:
            bad = sorted({v for v in frame[spec.label_field] if not (isinstance(v, int) and v < len(class_names))},
                         key=str)
            if bad:
                issues.append(issue(spec, ".label_field", f"{role} labels {bad[:5]} are not class ids of the "
                                    f"ClassLabel names {class_names}", "fix the labels or the features", bad[:5]))
        frames[role] = frame
    kinds = {type(v) for f in frames.values() for v in f[spec.label_field].head(1)}
    if len(kinds) > 1:  # ints in one split, words in another: compare them as strings
        frames = {r: f.assign(**{spec.label_field: f[spec.label_field].map(str)}) for r, f in frames.items()}
    if issues:
        raise TaskDataError(spec.name, issues)
    return frames


def apply_split_rule(spec: TaskSpec, seed: int, frames: dict[str, pd.DataFrame],
                     where: dict[str, str]) -> dict[str, pd.DataFrame]:
    """All three splits, carving the missing ones by ``spec.split_rule``; ``where`` names the sources for messages."""
    missing = [r for r in ROLES if r not in frames]
    if not missing:
        return frames
    if spec.split_rule == "none":
        raise fail(spec, ".split_rule", f"split_rule none needs train, validation and test; missing: {missing}",
                   "provide those splits (splits: maps names/stems), or set split_rule: attempt to carve them")
    train, val, test = frames["train"], frames.get("validation"), frames.get("test")
    rng_seed = seed_int(spec.name, seed, "split") % 2**32
    large = len(train) >= SMALL_TRAIN
    if val is not None:  # test missing: ATTEMPT's rule
        if large:
            val, train = _take(train, HELD_OUT_VAL, rng_seed)
            test = frames["validation"]
        else:
            test, val = _take(val, len(val) // 2, rng_seed)
    elif test is not None:  # validation missing: from train, never from test
        val, train = _take(train, HELD_OUT_VAL if large else round(CARVE_FRACTION * len(train)), rng_seed)
    else:
        n = round(CARVE_FRACTION * len(train))
        val, train = _take(train, n, rng_seed)
        test, train = _take(train, n, rng_seed + 1)
    frames = {"train": train, "validation": val, "test": test}
    too_small = [r for r, f in frames.items() if f.empty]
    if too_small:
        sizes = {r: len(f) for r, f in frames.items()}
        raise fail(spec, "", f"too few examples to carve {missing} by split_rule attempt: got {sizes} "
                   f"from {where}", "add examples, or provide validation and test splits yourself")
    return frames


def _take(frame: pd.DataFrame, n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded random sample of n rows, and the rest."""
    taken = frame.sample(n=min(n, len(frame)), random_state=seed)
    return taken, frame.drop(index=taken.index)


def _encode_labels(spec: TaskSpec, frames: dict[str, pd.DataFrame],
                   class_names: list[str] | None) -> tuple[list[str], dict[Any, int]]:
    """Label names and value -> class id: ClassLabel names, str(i) for ints, sorted names for strings."""
    train_values = set(frames["train"][spec.label_field])
    if class_names is not None and all(isinstance(v, int) for v in train_values):
        names = [str(n) for n in class_names]
        ids = {i: i for i in range(len(names))}
    elif all(isinstance(v, int) for v in train_values):
        names = [str(i) for i in range(max(train_values) + 1)]
        ids = {i: i for i in range(len(names))}
    else:
        names = sorted(str(v) for v in train_values)
        ids = {name: i for i, name in enumerate(names)}
    issues = []
    for role in ("validation", "test"):
        unseen = sorted(set(frames[role][spec.label_field]) - train_values, key=str)
        if unseen:
            issues.append(issue(spec, ".label_field", f"the {role} split has label(s) {unseen[:5]} that train "
                                f"lacks (train labels: {sorted(train_values, key=str)[:20]})",
                                "make train cover every class (check label_field and that the files belong "
                                "together)", unseen[:5]))
    if issues:
        raise TaskDataError(spec.name, issues)
    return names, ids


def _examples(spec: TaskSpec, frame: pd.DataFrame, ids: dict[Any, int]) -> list[Example]:
    columns = [frame[f].tolist() for f in spec.text_fields]
    labels = frame[spec.label_field].tolist()
    return [Example(tuple(str(c[i]) for c in columns), ids[y]) for i, y in enumerate(labels)]
