"""A spec file to a :class:`~orchestrator.spec.schema.PipelineSpec`: YAML read with ``safe_load``,
``--set`` overrides applied, and every problem (unknown keys, wrong types, bad values, task names
and roles that do not add up) collected into one :class:`~orchestrator.spec.schema.SpecError`, each issue
with the field path, the value seen and how to fix it, before any compute starts."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .schema import PipelineSpec, SpecError, SpecIssue


def _issue_from_pydantic(err: dict[str, Any], model_cls: type[BaseModel]) -> SpecIssue:
    loc = [str(p) for p in err["loc"]]
    field = ".".join(loc) or "(top level)"
    value = err.get("input")
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = _model_at(model_cls, err["loc"][:-1])
        valid = [f.alias or n for n, f in parent.model_fields.items()] if parent else []
        near = difflib.get_close_matches(loc[-1], valid, n=1)
        fix = f"did you mean {near[0]!r}?" if near else f"valid keys: {', '.join(valid)}"
        return SpecIssue(field=field, message="unknown key", fix=fix)
    if kind == "missing":
        return SpecIssue(field=field, message="required field is missing", fix="add it to the spec")
    if isinstance(value, (dict, list)) and len(str(value)) > 200:
        value = f"<{type(value).__name__} of {len(value)}>"
    message = err["msg"].removeprefix("Value error, ")
    return SpecIssue(field=field, value=value, message=message, fix=_fix_for(kind, err))


def _fix_for(kind: str, err: dict[str, Any]) -> str:
    ctx = err.get("ctx", {})
    if kind in ("greater_than", "greater_than_equal"):
        return f"use a number {'>' if kind == 'greater_than' else '>='} {ctx.get('gt', ctx.get('ge'))}"
    if kind in ("less_than", "less_than_equal"):
        return f"use a number {'<' if kind == 'less_than' else '<='} {ctx.get('lt', ctx.get('le'))}"
    if kind == "literal_error":
        return f"use one of {ctx.get('expected')}"
    if kind == "string_pattern_mismatch":
        return "use letters, digits, '_', '.', '-' only (max 64), starting with a letter or digit"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"give a value of type {kind.split('_')[0]}"
    return ""


def _model_at(model_cls: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    current: Any = model_cls
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part) or next(
            (f for f in current.model_fields.values() if f.alias == part), None
        )
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        current = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), ann)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def role_issues(raw: dict[str, Any]) -> list[SpecIssue]:
    """Cross-field checks on task names and roles, run on the raw mapping so that they are reported
    together with type errors elsewhere; parts of the wrong shape are left to the field checks."""
    tasks, sources, targets = raw.get("tasks"), raw.get("sources"), raw.get("targets")
    names = [t.get("name") for t in tasks if isinstance(t, dict)] if isinstance(tasks, list) else []
    names = [n for n in names if isinstance(n, str)]
    issues = []
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        issues.append(SpecIssue(field="tasks", value=dupes, message="duplicate task names",
                                fix="give each task a unique name"))
    roles = {}
    for role, listed in (("sources", sources), ("targets", targets)):
        if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
            continue
        roles[role] = listed
        for n in listed:
            if names and n not in names:
                near = difflib.get_close_matches(n, names, n=1)
                issues.append(SpecIssue(field=role, value=n, message="is not a task in `tasks`",
                                        fix=f"did you mean {near[0]!r}?" if near else f"define it under tasks or use one of {names}"))
        if len(set(listed)) != len(listed):
            issues.append(SpecIssue(field=role, value=listed, message="lists a task twice", fix="list each task once"))
    overlap = sorted(set(roles.get("sources", [])) & set(roles.get("targets", [])))
    if overlap and raw.get("allow_source_target_overlap") is not True:
        issues.append(SpecIssue(
            field="targets", value=overlap,
            message="also sources: their data (test split included) would leak into the shared prompt",
            fix="remove them from one list, or set allow_source_target_overlap: true"))
    return issues


def parse_spec(raw: Any, source: str = "spec") -> PipelineSpec:
    """Validate a raw mapping into a spec, or raise SpecError listing every problem."""
    if not isinstance(raw, dict):
        raise SpecError(
            [SpecIssue(field="(top level)", value=type(raw).__name__, message="a spec is a mapping of keys",
                       fix="start from pipelines/smoke.yaml")], source)
    issues = role_issues(raw)
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as err:
        issues = [_issue_from_pydantic(e, PipelineSpec) for e in err.errors()] + issues
    if issues:
        raise SpecError(issues, source)
    return spec


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (value parsed as YAML; list items by index)."""
    issues = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            issues.append(SpecIssue(field="--set", value=item, message="expected key.path=value", fix="e.g. --set target.steps=100"))
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            issues.append(SpecIssue(field=key, value=text, message=f"value is not valid YAML: {err}"))
            continue
        node: Any = raw
        parts = key.split(".")
        try:
            for part in parts[:-1]:
                node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
            if isinstance(node, list):
                node[int(parts[-1])] = value
            elif isinstance(node, dict):
                node[parts[-1]] = value
            else:
                raise TypeError
        except (ValueError, IndexError, TypeError, AttributeError):
            issues.append(SpecIssue(field=key, value=text, message="path does not exist in the spec",
                                    fix="lists are indexed by number, e.g. tasks.0.max_train_examples=100"))
    if issues:
        raise SpecError(issues, "--set")
    return raw


def load_spec(path: str | os.PathLike, overrides: list[str] | None = None) -> PipelineSpec:
    """Read a YAML spec (safe_load), apply overrides, validate; raise SpecError on any problem."""
    path = Path(path)
    if not path.is_file():
        raise SpecError([SpecIssue(field="SPEC", value=str(path), message="file not found",
                                   fix="pass a YAML file, e.g. pipelines/demo.yaml")], str(path))
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise SpecError([SpecIssue(field="(yaml)", message=f"malformed YAML at {where}: {getattr(err, 'problem', err)}",
                                   fix="check indentation and quoting there")], str(path)) from None
    raw = apply_overrides(raw if raw is not None else {}, overrides or []) if isinstance(raw, dict) or raw is None else raw
    return parse_spec(raw, str(path))
