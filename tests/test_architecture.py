"""The shape of the code base (issue 10): no import cycles, short functions, and an engine without GUIs.

Read from the source with `ast`, so every import counts, including those inside functions.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("glue_astrovlm", "jdaviz_plugin")
#: The engine's front ends and the only modules allowed to import glue, Qt or jdaviz.
FRONT_ENDS = ("glue_astrovlm.qt", "glue_astrovlm.glue_bridge", "glue_astrovlm.glue_plugin", "jdaviz_plugin")
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "tests" in parts:
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def _imports(name: str, path: Path, known) -> set[str]:
    """Project modules that ``name`` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return components


def test_no_import_cycles_even_inside_functions():
    graph = _graph()
    # a package's __init__ re-exporting its own modules is not a cycle of ideas
    for name in graph:
        graph[name] = {t for t in graph[name] if not (name.startswith(t + ".") and t in graph)}
    assert _cycles(graph) == []


#: The only module that imports Ray (issue 15), and only inside its functions.
RAY_MODULES = ("glue_astrovlm.survey.ray_engine",)


def _absolute_imports(path: Path, top_level_only: bool = False) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    names = []
    for node in nodes:
        names += ([a.name for a in node.names] if isinstance(node, ast.Import)
                  else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
    return names


def test_engine_imports_no_gui_stack():
    for name, path in _modules().items():
        if name.startswith(FRONT_ENDS):
            continue
        for imported in _absolute_imports(path):
            assert not imported.split(".")[0] in {"glue", "glue_qt", "glue_jupyter", "jdaviz", "qtpy",
                                                   "PyQt6", "PySide6", "ipyvuetify", "solara"}, \
                f"{name} imports {imported}"


def test_only_the_ray_engine_imports_ray_and_only_when_run():
    for name, path in _modules().items():
        imported = [i for i in _absolute_imports(path) if i.split(".")[0] == "ray"]
        if name in RAY_MODULES:
            assert not [i for i in _absolute_imports(path, top_level_only=True) if i.split(".")[0] == "ray"]
        else:
            assert imported == [], f"{name} imports {imported}"


def test_no_function_over_80_lines():
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert long == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", ["glue_astrovlm.records", "glue_astrovlm.errors"])
def test_leaf_modules_stay_leaves(module):
    graph = _graph()
    allowed = {"glue_astrovlm.errors", "glue_astrovlm.labelsets", "glue_astrovlm.stretch"}
    assert graph[module] <= allowed
