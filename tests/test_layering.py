"""The package's layering, read from the source: who may import whom, and no import cycles.

Layers, lowest first (a module imports its own package and lower layers only):

    fastseg (the package's __init__), fastseg._native                    the ground
    fastseg.threads                                                      the kernels' thread count
    fastseg.runtime                                                      worker processes
    fastseg.io, fastseg.ops                                              files; kernels
    fastseg.plan, fastseg.datasets                                       planning; converters
    fastseg.preprocess                                                   reads plans
    fastseg.workflow, fastseg.predict, fastseg.data                      verify -> plan -> preprocess; prediction; training batches
    fastseg.evaluate                                                     scoring, postprocessing selection, ensembles
    fastseg.train                                                        training (final validation predicts and scores)
    fastseg.distributed                                                  per-case work on a Ray cluster (--ray)
    fastseg.benchmark                                                    fastseg beside nnU-Net
    fastseg.commands, fastseg.cli                                        the command line
    fastseg.__main__                                                     `python -m fastseg`

Every `import` counts, also those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fastseg

PACKAGE = Path(fastseg.__file__).parent

RANK = {
    "fastseg": 0,
    "fastseg._native": 0,
    "fastseg.threads": 1,
    "fastseg.runtime": 2,
    "fastseg.io": 3,
    "fastseg.ops": 3,
    "fastseg.plan": 4,
    "fastseg.datasets": 4,
    "fastseg.preprocess": 5,
    "fastseg.workflow": 6,
    "fastseg.predict": 6,
    "fastseg.data": 6,
    "fastseg.evaluate": 7,
    "fastseg.train": 8,
    "fastseg.distributed": 8,
    "fastseg.benchmark": 9,
    "fastseg.commands": 10,
    "fastseg.cli": 11,
    "fastseg.__main__": 12,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every fastseg module `path` imports (for `from a import b`: `a.b` when that is a module, else `a`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m == "fastseg" or m.startswith("fastseg.")}


FILES = sorted(PACKAGE.rglob("*.py"))
MODULES = {_module_name(p) for p in FILES}
GRAPH = {_module_name(p): _imports(p) for p in FILES}


def _layer(module: str) -> str:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in RANK:
            return key
    raise AssertionError(f"{module} belongs to no layer; add its package to RANK in this test")


def test_every_module_is_in_a_layer():
    assert len(MODULES) > 50
    for module in MODULES:
        _layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    mine = _layer(module)
    for target in GRAPH[module]:
        theirs = _layer(target)
        if theirs == mine or theirs == "fastseg":
            continue
        assert RANK[theirs] < RANK[mine], f"{module} ({mine}) imports {target} ({theirs}), which is not below it"


def test_plan_knows_nothing_of_preprocessing():
    for module in MODULES:
        if _layer(module) == "fastseg.plan":
            assert not {t for t in GRAPH[module] if t.startswith("fastseg.preprocess")}, module


def test_no_import_cycles():
    # Tarjan's strongly connected components over the module graph.
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in GRAPH or w == v:
                continue
            # A package's __init__ is imported by its own modules' imports only as a namespace.
            if v.startswith(w + "."):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert cycles == [], f"import cycles: {cycles}"
