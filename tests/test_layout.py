"""The layout of the test tree: a test module never imports another test module.

A helper two test modules share lives in a support module (``tests/utils.py`` for the
in-process ones, ``tests/live/`` for the live-server ones): importing a test module would run
its fixtures' and markers' module-level code in the importer, and hide the helper from a reader
looking for it. Checked by parsing, so that a test module cannot hide from it.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def module_name(path: Path) -> str:
    """``tests/live/streams.py`` -> ``tests.live.streams``."""
    parts = path.relative_to(TESTS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute; ``from a import b`` counts as ``a`` and
    ``a.b`` (``b`` may be a module)."""
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return found


def is_test_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "tests" and parts[-1].startswith("test_")


def test_no_module_imports_a_test_module() -> None:
    python_files = sorted(TESTS.rglob("*.py"))
    assert TESTS / "test_layout.py" in python_files
    offenders = [
        f"{path.relative_to(TESTS.parent)} imports {imported}"
        for path in python_files
        for imported in sorted(imported_modules(path))
        if is_test_module(imported) and imported != module_name(path)
    ]
    assert not offenders, "move the shared helpers to a support module:\n" + "\n".join(offenders)
