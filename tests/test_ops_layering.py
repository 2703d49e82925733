"""The modules of fastseg.ops import one another without cycles, counting imports inside functions:
a cycle (as between ops/components.py and ops/_cuda_components.py over ComponentStats once) works
only as long as every import in it stays lazy, and makes either module hard to read alone."""

from __future__ import annotations

import ast
from pathlib import Path

import fastseg.ops

_ROOT = Path(fastseg.ops.__file__).resolve().parent
_PACKAGE = "fastseg.ops"


def _module_name(path: Path) -> str:
    parts = path.relative_to(_ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((_PACKAGE, *parts))


def _resolve(name: str, modules: set[str]) -> str | None:
    """The fastseg.ops module an imported name lives in: the longest known module prefix."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in _ROOT.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                # `from package import submodule` imports the submodule; `from module import name` the module.
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                found = _resolve(target, modules)
                if found is not None and found != module:
                    graph[module].add(found)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_the_graph_sees_function_level_imports():
    graph = _import_graph()
    # components.py imports _cuda_components inside its functions only.
    assert "fastseg.ops._cuda_components" in graph["fastseg.ops.components"]
    assert "fastseg.ops._stats" in graph["fastseg.ops._cuda_components"]


def test_no_import_cycles_between_ops_modules():
    graph = _import_graph()
    # The package's __init__ imports every public op; an op importing a name from the package
    # itself would close a cycle through it, and is caught the same way.
    assert _cycles(graph) == []
