"""Readers for external data: a Hugging Face dataset (``kind: hf``) or local files (``kind: local``).

Each reader returns one :class:`RawSplit` per split it finds (a DataFrame of only the needed
columns, plus where it came from and what columns it has, for error messages); turning them into a
:class:`~orchestrator.data.types.TaskData` is :mod:`orchestrator.data.splits`' job.

``hf``
    ``datasets.load_dataset(dataset, config)`` (``dataset`` defaults to the task name); a local
    directory in hub layout (``data/train-00000-of-00001.parquet``, ...) works offline.
``local``
    ``dataset`` is a directory holding ``train.*``, ``validation.*``, ``test.*`` (csv, tsv, jsonl,
    json, parquet; ``splits`` renames the stems) or one file (the train split), read with pandas.

Local files are read with pandas, not ``datasets.load_dataset("csv"|"json"|"parquet", data_files=...)``:
that would fail on a header-only or zero-byte csv (``Instruction "train" corresponds to no data``,
``DatasetGenerationError``) where pandas gives the empty split its own "is empty" issue, would wrap
every parse error in ``DatasetGenerationError``, and would copy each file into the datasets cache.

``datasets`` and pandas are imported inside the readers only: the embedded suite never needs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..spec.schema import SpecIssue, TaskSpec
from .types import ROLES, TaskDataError, fail, issue, nearest

if TYPE_CHECKING:
    import pandas as pd

FILE_READERS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


@dataclass
class RawSplit:
    frame: pd.DataFrame     # only the needed columns that exist
    where: str              # for messages: "file /x/train.csv" or "hf split 'train'"
    columns: list[str]      # every column the source has
    rows: int               # rows in the source, before any are dropped


def read_hf(spec: TaskSpec) -> tuple[dict[str, RawSplit], list[str] | None]:
    """The splits of a ``datasets`` dataset, and the train label's ClassLabel names (None if not one)."""
    import datasets  # lazy: heavy, and only this path needs it

    path = spec.dataset or spec.name
    try:
        loaded = datasets.load_dataset(path, spec.config)
    except Exception as err:  # noqa: BLE001 - datasets raises many types; all mean "cannot load"
        config_problem = spec.config is not None and "config" in str(err).lower()
        raise fail(spec, ".config" if config_problem else ".dataset",
                   f"datasets.load_dataset({path!r}, {spec.config!r}) failed: {type(err).__name__}: {err}",
                   "check the dataset id and config name; without network use a local copy (a directory in hub "
                   "layout works with kind: hf) or kind: local with csv/jsonl/parquet files", path) from None
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    names, issues = _split_names(spec, list(loaded))
    if issues:
        raise TaskDataError(spec.name, issues)
    wanted = [*spec.text_fields, spec.label_field]
    parts = {}
    for role, name in names.items():
        ds = loaded[name]
        present = [c for c in dict.fromkeys(wanted) if c in ds.column_names]
        parts[role] = RawSplit(ds.select_columns(present).to_pandas(), f"hf split {name!r}", list(ds.column_names),
                               ds.num_rows)
    train_feature = loaded[names["train"]].features.get(spec.label_field) if "train" in names else None
    class_names = list(train_feature.names) if isinstance(train_feature, datasets.ClassLabel) else None
    return parts, class_names


def _split_names(spec: TaskSpec, available: list[str]) -> tuple[dict[str, str], list[SpecIssue]]:
    """Role -> hf split name: spec.splits, else the role's own name where the dataset has it."""
    names, issues = {}, []
    for role in ROLES:
        name = spec.splits.get(role, role)
        if name in available:
            names[role] = name
        elif role in spec.splits or role == "train":
            issues.append(issue(spec, f".splits.{role}" if role in spec.splits else ".splits",
                                f"no split {name!r} for {role}; the dataset has {available}",
                                f"{nearest(name, available)}set splits.{role} to one of {available}", name))
    return names, issues


def read_local(spec: TaskSpec) -> dict[str, RawSplit]:
    """The split files of directory ``spec.dataset``, or the one file it names as the train split."""
    if not spec.dataset:
        raise fail(spec, ".dataset", "a local task needs `dataset`",
                   "set dataset to a directory holding train/validation/test files, or to one file")
    path = Path(spec.dataset).expanduser()
    if not path.exists():
        raise fail(spec, ".dataset", f"{path} does not exist (relative paths start from {Path.cwd()})",
                   "point dataset at a directory with train.csv/validation.csv/test.csv (or jsonl/parquet) "
                   "or at one such file", str(path))
    if path.is_file():  # one file: the train split; split_rule carves validation and test
        if path.suffix not in FILE_READERS:
            raise TaskDataError(spec.name, [_extension_issue(spec, path, path.suffix)])
        return {"train": _read_file(spec, path, path.suffix)}
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    parts, issues = {}, []
    for role in ROLES:
        stem = spec.splits.get(role, role)
        matches = [p for p in files if p.name == stem or p.name.startswith(stem + ".")]
        usable = [p for p in matches if p.name[len(stem):] in FILE_READERS]
        if len(usable) > 1:
            issues.append(issue(spec, ".dataset", f"the {role} split has several files: {[p.name for p in usable]}",
                                "keep one file per split", str(path)))
        elif usable:
            parts[role] = _read_file(spec, usable[0], usable[0].name[len(stem):])
        elif matches:
            issues.append(_extension_issue(spec, matches[0], matches[0].name[len(stem):]))
        elif role in spec.splits or role == "train":
            stems = sorted({p.name.split(".")[0] for p in files})
            issues.append(issue(spec, f".splits.{role}" if role in spec.splits else ".dataset",
                                f"no {role} file {stem}.<{'|'.join(e[1:] for e in FILE_READERS)}> in {path} "
                                f"(files: {[p.name for p in files][:10]})",
                                f"{nearest(stem, stems)}name the file {stem}.csv (or .jsonl/.parquet), map it with "
                                f"splits.{role}: <stem>, or use kind: hf for a hub-layout directory", stem))
    if issues:
        raise TaskDataError(spec.name, issues)
    return parts


def _extension_issue(spec: TaskSpec, path: Path, ext: str) -> SpecIssue:
    return issue(spec, ".dataset", f"{path.name}: unsupported file extension {ext!r}",
                 f"save it as one of {', '.join(FILE_READERS)}", str(path))


def _read_file(spec: TaskSpec, path: Path, ext: str) -> RawSplit:
    import pandas as pd  # lazy: not needed by the embedded suite

    texts_as_str = {f: str for f in spec.text_fields}  # "007" stays "007", "NA" stays a word
    try:
        if ext in (".csv", ".tsv"):
            try:
                frame = pd.read_csv(path, sep="\t" if ext == ".tsv" else ",", dtype=texts_as_str,
                                    keep_default_na=False, na_values=[""])
            except pd.errors.EmptyDataError:
                frame = pd.DataFrame()
        elif ext in (".jsonl", ".json"):
            frame = pd.read_json(path, lines=ext == ".jsonl", dtype=False)
        else:
            frame = pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - any parse error means the same: fix the file
        raise fail(spec, ".dataset", f"could not read {path}: {type(err).__name__}: {err}",
                   f"check that it is valid {ext[1:]} with a header/keys row", str(path)) from None
    wanted = [c for c in dict.fromkeys([*spec.text_fields, spec.label_field]) if c in frame.columns]
    return RawSplit(frame[wanted], f"file {path}", [str(c) for c in frame.columns], len(frame))
