"""The package's shape, checked: imports point down the layers, nothing imports in a circle,
and plugins use only the documented public layer (as a third-party plugin must)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "lvmtoolkit"

# Lower layers never import higher ones (same-layer imports are allowed but must not cycle).
# The top-level package (lvmtoolkit/__init__.py) is the public facade: it loads every name
# lazily by string, so it imports nothing but errors and hookspecs.
LAYERS = [
    {"lvmtoolkit.errors", "lvmtoolkit.hookspecs"},
    {"lvmtoolkit.core", "lvmtoolkit.data", "lvmtoolkit.flows", "lvmtoolkit.images"},
    {"lvmtoolkit.refiners", "lvmtoolkit.adapters", "lvmtoolkit.plugins"},
    {"lvmtoolkit.metrics"},
    {"lvmtoolkit.tasks"},
    {"lvmtoolkit.jobs"},
    {"lvmtoolkit.cli", "lvmtoolkit.testing", "lvmtoolkit.__main__"},
]
FACADE = "lvmtoolkit"
FACADE_CONSTANTS = {"__version__", "hookimpl"}  # defined in the facade itself, no import behind

# What a plugin may import: the documented public layer (docs/api).
PUBLIC_MODULES = {"lvmtoolkit", "lvmtoolkit.errors", "lvmtoolkit.testing"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, *, module_level_only: bool) -> set[str]:
    """Modules of lvmtoolkit that ``path`` imports (``from a import b`` is a.b if b is one)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module == FACADE and {a.name for a in node.names} <= FACADE_CONSTANTS:
                continue
            submodules = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [m for m in submodules if m in MODULES] or [node.module]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] == "lvmtoolkit")
    return found


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _layer(module: str) -> int:
    package = _package(module)
    for index, layer in enumerate(LAYERS):
        if package in layer:
            return index
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS")


def test_every_package_has_a_layer():
    for module in MODULES:
        if module != FACADE:
            _layer(module)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != FACADE))
def test_imports_point_down(module):
    # Function-level imports count too: a lazy import upward is still upward.
    for target in _imports(MODULES[module], module_level_only=False):
        if target == FACADE:
            raise AssertionError(f"{module} imports the public facade; import the module")
        assert _layer(target) <= _layer(module), f"{module} imports {target}, a higher layer"


def test_core_imports_none_of_the_layers_above():
    above = ("refiners", "metrics", "tasks", "cli", "plugins", "jobs", "adapters", "testing")
    for module, path in MODULES.items():
        if not module.startswith("lvmtoolkit.core"):
            continue
        for target in _imports(path, module_level_only=False):
            assert target.split(".")[1] not in above, f"{module} imports {target}"


def test_the_facade_imports_nothing_heavy():
    assert _imports(MODULES[FACADE], module_level_only=False) <= {
        "lvmtoolkit.errors",
        "lvmtoolkit.hookspecs",
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _module_graph() -> dict[str, set[str]]:
    # Every import counts: one inside a function, or under TYPE_CHECKING, is a dependency
    # all the same, and a circle of them means two modules that cannot be read apart.
    return {m: _imports(p, module_level_only=False) - {m} for m, p in MODULES.items()}


def test_no_circular_pair_of_modules():
    graph = _module_graph()
    pairs = sorted(
        {tuple(sorted((a, b))) for a in graph for b in graph[a] if a in graph.get(b, ())}
    )
    assert pairs == [], f"modules that import each other: {pairs}"


def test_no_import_cycle_between_modules():
    cycle = _cycle(_module_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_module_graph_sees_imports_inside_functions(tmp_path):
    lazy = tmp_path / "lazy.py"
    lazy.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from lvmtoolkit.core.model import Model\n"
        "def f():\n    from lvmtoolkit.tasks.observations import Missing\n"
    )
    assert _imports(lazy, module_level_only=False) == {
        "lvmtoolkit.core.model",
        "lvmtoolkit.tasks.observations",
    }


def test_tasks_is_a_few_modules():
    # Restoration is one idea: a newcomer finds a noise model, the observed model, the
    # methods and the evaluation each in one file.
    modules = sorted(p.name for p in (PACKAGE / "tasks").glob("*.py"))
    assert len(modules) <= 6, modules


def test_no_import_cycle_between_packages():
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in MODULES.items():
        for target in _imports(path, module_level_only=False):
            if _package(target) != _package(module):
                graph[_package(module)].add(_package(target))
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


PLUGIN_SOURCES = sorted([*ROOT.glob("plugins/*/src/**/*.py"), *ROOT.glob("examples/*/src/**/*.py")])


@pytest.mark.parametrize("path", PLUGIN_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_public_layer(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "lvmtoolkit":
                assert name in PUBLIC_MODULES, (
                    f"{path.relative_to(ROOT)} imports {name}; plugins use only "
                    f"{', '.join(sorted(PUBLIC_MODULES))} (export what is missing there)"
                )


def test_plugin_sources_were_found():
    assert len(PLUGIN_SOURCES) >= 8


def test_the_public_names_of_plugins_resolve():
    import lvmtoolkit

    for path in PLUGIN_SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "lvmtoolkit":
                for alias in node.names:
                    assert hasattr(lvmtoolkit, alias.name), (path, alias.name)
