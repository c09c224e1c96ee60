"""Helpers that write small datasets to disk for tests (no network): local split files and
directories in Hugging Face hub layout that ``datasets.load_dataset(dir)`` reads offline."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

Rows = dict[str, list[Any]]  # column -> values


def hf_offline(monkeypatch, cache_dir: Path) -> None:
    """Make `datasets` refuse the network and cache under cache_dir, even if it was imported already."""
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache_dir, raising=False)


def write_split_files(directory: Path, splits: dict[str, Rows], fmt: str = "csv") -> Path:
    """Write ``<split>.<fmt>`` for each split (fmt: csv, tsv, jsonl, json, parquet); returns directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for stem, rows in splits.items():
        write_file(directory / f"{stem}.{fmt}", rows)
    return directory


def write_file(path: Path, rows: Rows) -> Path:
    frame = pd.DataFrame(rows)
    ext = path.suffix
    if ext == ".csv":
        frame.to_csv(path, index=False)
    elif ext == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif ext == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif ext == ".json":
        frame.to_json(path, orient="records")
    elif ext == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        raise ValueError(f"no writer for {ext}")
    return path


def hub_split_file(directory: Path, split: str) -> Path:
    """Where a dataset repo as on the hub keeps one split."""
    return directory / "data" / f"{split}-00000-of-00001.parquet"


def write_hub_layout(directory: Path, splits: dict[str, Rows], features: Any = None) -> Path:
    """A dataset repo as on the hub: ``data/<split>-00000-of-00001.parquet``.

    With ``features`` (a ``datasets.Features``, e.g. with a ClassLabel), the parquet files carry them
    and ``load_dataset`` restores them.
    """
    import datasets

    (directory / "data").mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        ds = datasets.Dataset.from_dict(rows, features=features)
        ds.to_parquet(os.fspath(hub_split_file(directory, split)))
    return directory


def sentiment_rows(n: int, offset: int = 0, labels: tuple[Any, ...] = ("neg", "pos")) -> Rows:
    """n distinct single-text rows cycling through labels."""
    return {"text": [f"sentence number {offset + i}" for i in range(n)],
            "label": [labels[i % len(labels)] for i in range(n)]}


def pair_rows(n: int, offset: int = 0, labels: tuple[Any, ...] = (0, 1)) -> Rows:
    """n distinct premise/hypothesis rows cycling through labels."""
    return {"premise": [f"premise {offset + i}" for i in range(n)],
            "hypothesis": [f"hypothesis {offset + i}" for i in range(n)],
            "label": [labels[i % len(labels)] for i in range(n)]}
