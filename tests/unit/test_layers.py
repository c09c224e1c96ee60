"""The package's layers, read from its own imports (every import, those inside functions too): each
module imports only its own layer and those below it, and no import chain comes back to where it
started. The order, bottom up, is the one docs/design.md draws."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "orchestrator"
# Bottom up. serve sits below pipeline: a run's last step registers its chosen models.
LAYERS = [("runtime",), ("spec",), ("data", "method"), ("tracking",), ("results",), ("serve", "serving"),
          ("pipeline",), ("cli", "__main__")]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every module of the package and the modules of the package it imports."""
    graph: dict[str, set[str]] = {}
    modules = {module_name(path) for path in PACKAGE.rglob("*.py")}
    for path in sorted(PACKAGE.rglob("*.py")):
        name, is_package = module_name(path), path.name == "__init__.py"
        here = name.split(".") if is_package else name.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(here[: len(here) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else node.module
                if base.split(".")[0] == "orchestrator":
                    # ``from . import x`` imports the module x when there is one
                    found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == "orchestrator"}
        graph[name] = found - {name}
    return graph


def layer_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # the package itself
        return -1
    return next(i for i, names in enumerate(LAYERS) if parts[1] in names)


def test_every_module_has_a_layer():
    assert all(layer_of(m) >= -1 for m in imports())  # next() raises on a folder the list misses


def test_no_import_goes_up_a_layer():
    upward = sorted(f"{m} -> {dep}" for m, deps in imports().items() for dep in deps if layer_of(dep) > layer_of(m))
    assert upward == []


def test_no_import_circle():
    graph = imports()
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                return path + [module, dep]
            if dep not in state and (cycle := visit(dep, path + [module])):
                return cycle
        state[module] = 2
        return None

    cycles = [c for m in sorted(graph) if m not in state and (c := visit(m, []))]
    assert cycles == []


def test_few_modules_sit_loose_at_the_top():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(loose) <= 6, loose
