"""The library's architecture, checked: ddpm_lib imports downward only, with no cycles.

The layers (``ddpm_lib/__init__.py`` says what each holds), lowest first. A module may import
from its own layer's earlier entries and from lower layers, never from a later entry: the maths
modules form a chain in the order listed (each idea builds on the ones before it), and the maths
never imports the networks, the GPU machinery, training, evaluation or the command line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ddpm_lib"

# Units in import order: a module file or a subpackage (everything inside it).
ORDER = [
    "utils",
    "checks",  # the statistics of the chapters' Monte Carlo checks
    # the maths, one idea per module
    "schedules",
    "gaussian",
    "mixture",
    "diffusion",
    "elbo",
    "learned_variance",
    "samplers",
    "sde",
    "oracles",
    "guidance",  # steering a conditional model (Chapter 8)
    "flow",  # flow matching (Chapter 9)
    # data and pictures
    "data",
    "viz",
    # the networks, the GPU machinery, training, evaluation, the command line
    "nets",
    "accel",
    "training",
    "evaluation",
    "exercises",  # the chapters' coding exercises and their checks
    "cli",
    "__main__",
]
MATHS = ORDER[1 : ORDER.index("flow") + 1]


def unit_of(module: str) -> str:
    """'ddpm_lib.training.trainer' -> 'training'; 'ddpm_lib' (the package) -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every ddpm_lib module that ``path`` imports, at any depth in the file (lazy ones too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ddpm_lib")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("ddpm_lib"):
                continue
            for alias in node.names:  # `from . import x` may name a module
                sub = f"{target}.{alias.name}"
                sub_path = PACKAGE.parent / Path(*sub.split("."))
                found.add(
                    sub if sub_path.with_suffix(".py").exists() or sub_path.is_dir() else target
                )
    return found


GRAPH = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_belongs_to_a_layer():
    units = {unit_of(m) for m in GRAPH} - {"__init__"}
    assert units <= set(ORDER), f"modules in no layer: {sorted(units - set(ORDER))}"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_module_imports_only_from_earlier_layers(module):
    here = unit_of(module)
    if here == "__init__":
        return  # the package's front door may re-export from anywhere
    for target in GRAPH[module]:
        there = unit_of(target)
        assert there != "__init__", f"{module} imports the package root {target}: import the module"
        if there == here:
            continue  # inside a subpackage (cycles are checked below)
        assert ORDER.index(there) < ORDER.index(here), (
            f"{module} imports {target}: {there!r} comes after {here!r} in the layers"
        )


def test_the_maths_never_imports_the_machinery():
    above = set(ORDER) - set(MATHS) - {"utils", "checks"}
    for module, targets in GRAPH.items():
        if unit_of(module) in MATHS:
            bad = sorted(t for t in targets if unit_of(t) in above)
            assert not bad, f"{module} (maths) imports {bad}"


def test_there_is_no_import_cycle():
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH.get(node, ())):
            if nxt == node or nxt not in GRAPH:
                continue
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node, [node])


def test_the_checker_sees_relative_and_lazy_imports():
    # A check that cannot fail is no check: the graph must hold edges we know exist.
    assert "ddpm_lib.diffusion" in GRAPH["ddpm_lib.elbo"]  # from .diffusion import ...
    assert "ddpm_lib.viz" in GRAPH["ddpm_lib.evaluation.evaluate"]  # a lazy import in a function
    assert "ddpm_lib.accel.graphs" in GRAPH["ddpm_lib.training.trainer"]  # from ..accel.graphs
