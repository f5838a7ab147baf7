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


# -- no import inside a function to dodge a cycle -----------------------------------------------
# The only in-function project imports allowed: CLI dispatch modules that defer torch, onnx or
# cvat-sdk so `python -m core --help` and `status` stay fast. Each carries a comment line starting
# with "# Lazy:" right above its import block.
LAZY_ALLOWED = ("core/cli.py", "core/commands/")


def function_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) for every project import inside a function body."""
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for line, module in imported_modules(fn):
                if module.split(".")[0] in RANK:
                    found.append((line, module))
    return sorted(set(found))


def _lazy_lines(tree: ast.AST, lines: list[str]) -> set[int]:
    """Lines of imports whose run of consecutive import statements follows a ``# Lazy:`` line."""
    ok: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        run: list[ast.stmt] = []
        for stmt in [*body, None]:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                run.append(stmt)
                continue
            if run and lines[run[0].lineno - 2].lstrip().startswith("# Lazy:"):
                ok.update(r.lineno for r in run)
            run = []
    return ok


def in_function_imports(root: Path = ROOT) -> list[str]:
    bad = []
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            rel = path.relative_to(root).as_posix()
            tree = ast.parse(text, filename=str(path))
            lazy = _lazy_lines(tree, text.splitlines())
            for line, module in function_imports(tree):
                if rel.startswith(LAZY_ALLOWED) and line in lazy:
                    continue
                bad.append(f"{rel}:{line} imports {module} inside a function")
    return bad


def test_no_project_import_inside_a_function():
    assert in_function_imports() == []


def test_the_check_sees_an_in_function_import(tmp_path):
    (tmp_path / "core" / "commands").mkdir(parents=True)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.py").write_text("def f():\n    from data.x import y\n")
    (tmp_path / "core" / "commands" / "c.py").write_text(
        "def ok():\n    # Lazy: torch only when needed.\n    from models.m import f\n\n"
        "def bad():\n    from models.m import f\n")
    assert sorted(in_function_imports(tmp_path)) == [
        "core/commands/c.py:6 imports models.m inside a function",
        "models/m.py:2 imports data.x inside a function"]


def test_models_never_reach_the_store():
    """models/ gets arrays, paths and configs; reading or writing the store is core's job."""
    bad = []
    for path in sorted((ROOT / "models").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        bad += [f"{path.relative_to(ROOT)}:{line} imports {module}"
                for line, module in imported_modules(tree)
                if module in ("data.store", "data.workspace")]
    assert bad == []


def round_writes_outside_core(root: Path = ROOT) -> list[str]:
    """Calls of ``create_round`` in data/, models/ or cvat_bridge/: core is the one writer of rounds."""
    bad = []
    for layer in ("data", "models", "cvat_bridge", "app"):
        for path in sorted((root / layer).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "create_round"):
                    bad.append(f"{path.relative_to(root).as_posix()}:{node.lineno} records a round")
    return bad


def test_only_core_records_rounds():
    """data.sampling / data.evalset pick images; core.rounds and core.queue record the rounds."""
    assert round_writes_outside_core() == []


def test_the_check_sees_a_round_written_in_data(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "s.py").write_text("def f(store):\n    return store.create_round([1], kind='seed')\n")
    assert round_writes_outside_core(tmp_path) == ["data/s.py:2 records a round"]
