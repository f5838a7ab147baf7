"""The one-way layering rule, checked on every import statement (ast), inside functions too.

data < models < cvat_bridge < core < app: a module may import only its own layer or a lower one.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("data", "models", "cvat_bridge", "core", "app")
RANK = {name: i for i, name in enumerate(LAYERS)}


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in ``tree``; relative imports stay in-package."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def upward_imports() -> list[str]:
    bad = []
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for line, module in imported_modules(tree):
                top = module.split(".")[0]
                if top in RANK and RANK[top] > RANK[layer]:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


def test_no_layer_imports_a_higher_layer():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path):
    tree = ast.parse("def f():\n    from core.store import X\n")
    assert imported_modules(tree) == [(2, "core.store")]
