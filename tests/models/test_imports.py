"""Layering of the package: model files do not import one another, shared parts do not import models, and the
import graph of ``src/avseg`` has no cycle besides the known ones listed here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import avseg

SRC = Path(avseg.__file__).parent

# Files of avseg/models that every family uses (the contract, the recipe, the registry, the CLI listing); every
# other file there is a model module.
MODEL_INFRASTRUCTURE = {"__init__", "base", "commands", "registry"}
# A family's own parts, which only that family's model file imports.
FAMILY_PARTS = {"auralsam2": {"auralsam2_fuser"}}

KNOWN_CYCLES: list[set[str]] = []  # none: add a cycle here only with the reason it cannot be avoided


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def _type_checking_only(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(name: str, source: str | None = None) -> set[str]:
    """The avseg modules that module ``name`` (or ``source`` read as that module) imports anywhere: deferred imports
    inside functions included, imports under ``if TYPE_CHECKING:`` excluded, each resolved to the deepest module
    that exists."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in MODULES:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            return
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # "from avseg.models import tpavi" imports the module avseg.models.tpavi
            targets = [f"{origin}.{alias.name}" for alias in node.names]
        for target in targets:
            if target.startswith("avseg"):
                resolved = resolve(target)
                if resolved is not None and resolved != name:
                    found.add(resolved)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source if source is not None else path.read_text(), filename=str(path)))
    return found


GRAPH = {name: imported_modules(name) for name in MODULES}


def model_modules() -> set[str]:
    return {p.stem for p in (SRC / "models").glob("*.py") if p.stem not in MODEL_INFRASTRUCTURE}


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components of ``graph``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            out.append(component)

    for v in graph:
        if v not in index:
            connect(v)
    return out


def test_the_parser_sees_every_kind_of_import():
    source = """
from typing import TYPE_CHECKING
import avseg.models.tpavi
from . import avsegformer
from .base import AVSModel
from avseg.layers.audio import AudioEncoder
if TYPE_CHECKING:
    from avseg.checkpoint import save_checkpoint

def build():
    from avseg.models.auralsam2 import AuralSAM2
"""
    assert imported_modules("avseg.models.registry", source) == {
        "avseg.models.tpavi",
        "avseg.models.avsegformer",  # relative, and a module named in "from package import module"
        "avseg.models.base",
        "avseg.layers.audio",
        "avseg.models.auralsam2",  # deferred, inside a function
    }


@pytest.mark.parametrize("model", sorted(model_modules()))
def test_no_model_module_imports_another(model):
    others = model_modules() - {model} - FAMILY_PARTS.get(model, set())
    imported = {
        m.removeprefix("avseg.models.") for m in GRAPH[f"avseg.models.{model}"] if m.startswith("avseg.models.")
    }
    assert not imported & others, f"avseg/models/{model}.py imports the model module(s) {sorted(imported & others)}"


def test_shared_parts_import_no_model():
    for name, imported in GRAPH.items():
        if name.startswith(("avseg.layers", "avseg.data")):
            assert not {m for m in imported if m.startswith("avseg.models")}, f"{name} imports a model module"


def test_the_import_graph_has_no_cycle_besides_the_known_ones():
    graph = {name: set(imported) for name, imported in GRAPH.items()}
    for members in KNOWN_CYCLES:
        for name in members:  # the imports among a known cycle's members are cut, so that any other cycle shows
            graph[name] -= members
    cycles = [sorted(c) for c in strongly_connected(graph) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"
