"""The package's layout (issue 26): a handful of top-level modules, a docstring per subpackage saying what it
is for, one module holding the kernel/dtype policy, and a module import graph without cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import layerskip

PACKAGE = Path(layerskip.__file__).parent


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def module_level_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The layerskip modules ``path`` imports when it is imported (not inside functions)."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("layerskip"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("layerskip"))
    out.discard(name)
    return {m for m in out if m in known}


def test_a_handful_of_top_level_modules_and_a_docstring_per_subpackage() -> None:
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert top == ["__init__", "__main__", "errors", "validation"]
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, f"{init.parent.name}/ says nothing about what it is for"


def test_the_module_import_graph_has_no_cycle() -> None:
    found = modules()
    graph = {name: module_level_imports(path, name, set(found)) for name, path in found.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert graph["layerskip.kernels.policy"] <= {"layerskip.kernels.native", "layerskip.model.config"}


def test_one_module_decides_native_bf16() -> None:
    """The one native-bf16 test (oneDNN's) and the CPU-flag reading live in the policy module only."""
    needles = ("_is_mkldnn_bf16_supported", "/proc/cpuinfo")
    holders = {name for name, path in modules().items() if any(n in path.read_text() for n in needles)}
    assert holders == {"layerskip.kernels.policy"}
