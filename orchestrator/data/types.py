"""The types every task becomes, and the small helpers the synthetic suite, the readers and the
split building all share.

Every task, whatever its source, becomes a :class:`TaskData`: label names, label words (for
text-to-text models) and train/validation/test lists of :class:`Example`. Every data problem is a
:class:`~orchestrator.spec.schema.SpecIssue` naming the task field at fault and its fix, raised together
as one :class:`TaskDataError`.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass
from typing import Any, Sequence

from ..spec.schema import SpecIssue, TaskSpec

ROLES = ("train", "validation", "test")


@dataclass(frozen=True)
class Example:
    texts: tuple[str, ...]   # 1 text, or 2 for pair tasks
    label: int               # class id, index into TaskData.label_names

    def __post_init__(self) -> None:
        # A bare string here would silently become a tuple of characters later on.
        if not isinstance(self.texts, tuple) or not 1 <= len(self.texts) <= 2:
            raise TypeError(f"Example.texts must be a tuple of 1 or 2 strings, got {self.texts!r}")


@dataclass
class TaskData:
    name: str
    label_names: list[str]
    label_words: list[str]
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    metric: str

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        for split in (self.train, self.validation, self.test):
            if split:
                return len(split[0].texts) == 2
        return False

    def split(self, role: str) -> list[Example]:
        """The examples of ``train``, ``validation`` or ``test``."""
        if role not in ROLES:
            raise ValueError(f"unknown split {role!r}; use one of {', '.join(ROLES)}")
        return getattr(self, role)


def text_columns(spec: TaskSpec, pair: bool) -> list[str]:
    """The column names a task's texts go by outside the pipeline (a served model's input, a file to
    predict on): the spec's ``text_fields``, or for embedded tasks, which have no columns, the
    tokenizer's own names ``text`` and ``text_pair``."""
    if spec.kind == "embedded":
        return ["text", "text_pair"] if pair else ["text"]
    return list(spec.text_fields)


class TaskDataError(ValueError):
    """A task whose data cannot be used; ``issues`` lists every problem found, each with its fix."""

    def __init__(self, task: str, issues: list[SpecIssue]):
        self.task = task
        self.issues = issues
        lines = "\n".join(f"  - {i}" for i in issues)
        super().__init__(f"task {task!r}: {len(issues)} data problem(s)\n{lines}")


def issue(spec: TaskSpec, where: str, message: str, fix: str = "", value: Any = None) -> SpecIssue:
    """One problem of task ``spec``; ``where`` is the field suffix (".dataset", or "" for the task)."""
    return SpecIssue(field=f"tasks.{spec.name}{where}", value=value, message=message, fix=fix)


def fail(spec: TaskSpec, where: str, message: str, fix: str = "", value: Any = None) -> TaskDataError:
    """A :class:`TaskDataError` of one issue, for problems that stop loading at once."""
    return TaskDataError(spec.name, [issue(spec, where, message, fix, value)])


def seed_int(*parts: Any) -> int:
    """A stable 64-bit seed (Python's hash() of str changes per process, so hash explicitly)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little")


def nearest(word: str, options: Sequence[str]) -> str:
    """A "did you mean" prefix for a fix, or "" when nothing is close."""
    near = difflib.get_close_matches(word, list(options), n=1)
    return f"did you mean {near[0]!r}? " if near else ""


def label_words(spec: TaskSpec, names: list[str]) -> list[str]:
    """Class id -> single lowercase word, from ``spec.label_words`` (keyed by name or id) or the names."""
    given = spec.label_words or {}
    issues = []
    unknown = [k for k in given if k not in names and not (k.isdigit() and int(k) < len(names))]
    if unknown:
        issues.append(issue(spec, ".label_words", f"keys {unknown} are not labels of this task",
                            f"key label_words by label name: {names}", unknown))
    words = []
    for i, name in enumerate(names):
        word = given.get(name, given.get(str(i)))
        if word is None and given:
            issues.append(issue(spec, ".label_words", f"label {name!r} has no word",
                                f"add {name}: <word> to label_words"))
        if word is None:  # default: the name itself, lowercased and joined into one word
            word = re.sub(r"\s+", "_", name.strip().lower()) or str(i)
        if not re.fullmatch(r"\S+", word) or word != word.lower():
            issues.append(issue(spec, ".label_words", f"label word {word!r} for {name!r} is not one lowercase word",
                                "use a single lowercase word without spaces", word))
        words.append(word)
    dupes = sorted({w for w in words if words.count(w) > 1})
    if dupes:
        issues.append(issue(spec, ".label_words", f"labels share the word(s) {dupes}",
                            "give every label its own word", dupes))
    if issues:
        raise TaskDataError(spec.name, issues)
    return words
