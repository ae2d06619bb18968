"""The package's modules import each other one way: no import cycle, and no import of our own
modules inside a function except where a documented Django constraint requires one.

Read from the modules' own source (``ast``), so the test sees what a reader sees: module-level
imports, without those under ``if TYPE_CHECKING:`` (typing only, never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "django_sse"

# Function-local imports of our own modules that a Django constraint requires, with it.
ALLOWED_LOCAL_IMPORTS = {
    # AppConfig.ready(), Django's place for it: importing the checks registers them, and they
    # import the models, which cannot load before the app registry is ready.
    ("django_sse.apps", "django_sse.checks"),
    # PEP 562 re-export of publish()/apublish(): Django imports the package (for its AppConfig)
    # before the app registry is ready, and publishing imports the models.
    ("django_sse", "django_sse.publishing"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {
        module_name(path): ast.parse(path.read_text(), str(path))
        for path in sorted(PACKAGE.rglob("*.py"))
        if "migrations" not in path.parts
    }


def imported(node: ast.Import | ast.ImportFrom, names: set[str]) -> set[str]:
    """Our modules an import statement loads (``from django_sse import x`` loads x if x is a
    module)."""
    found: set[str] = set()
    if isinstance(node, ast.Import):
        found = {alias.name for alias in node.names}
    elif node.module and node.level == 0:
        found = {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in names}


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def top_level_imports(tree: ast.Module, names: set[str]) -> set[str]:
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.update(imported(node, names))
            elif isinstance(node, ast.If) and not is_type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(tree.body)
    return found


def local_imports(tree: ast.Module, names: set[str]) -> set[str]:
    found: set[str] = set()
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(function):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    found.update(imported(node, names))
    return found


def graph() -> dict[str, set[str]]:
    trees = modules()
    names = set(trees)
    edges = {name: top_level_imports(tree, names) - {name} for name, tree in trees.items()}
    # Importing a.b runs a/__init__.py first; a package's __init__ importing its own modules
    # (django_sse.checks registering its checks) is how packages are built, not a cycle.
    for name in names:
        parent = name.rpartition(".")[0]
        if parent in names and parent != "django_sse":
            edges[name].add(parent)
            edges[parent].discard(name)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return found


def test_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_importing_the_package_imports_nothing_of_ours() -> None:
    # ``import django_sse`` happens before the app registry is ready (INSTALLED_APPS): it must
    # load no model, so none of our modules.
    assert top_level_imports(modules()["django_sse"], set(modules())) == set()


def test_no_function_local_import_of_our_modules() -> None:
    trees = modules()
    names = set(trees)
    local = {
        (name, target)
        for name, tree in trees.items()
        for target in local_imports(tree, names)
        if target != "django_sse"
    }
    assert sorted(local - ALLOWED_LOCAL_IMPORTS) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
