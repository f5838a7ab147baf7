"""App pages draw without importing torch (issue 11): torch loads only in job runners, training,
scoring and export. Each page's project imports are imported in a fresh interpreter, one page
after another; the first module that brings torch in is named.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("data", "models", "cvat_bridge", "core", "ui", "signin")
# Pages that still need torch to draw, and why (see docs/ARCHITECTURE.md, "Torch-free pages").
NEEDS_TORCH: dict[str, str] = {}  # none left: the Train page reads models.weights_catalog


def page_imports(path: Path) -> list[str]:
    """Project modules a page imports at its top level (``ui`` is app/ui.py)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] in PROJECT]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] in PROJECT:
            out += [f"{node.module}.{a.name}" if node.module in ("core", "cvat_bridge")
                    else node.module for a in node.names]
    return out


_PROBE = """
import importlib, json, sys
sys.path[:0] = [{root!r}, {app!r}] + sys.argv[2:]
found = {{}}
for page, modules in json.loads(sys.argv[1]).items():
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:          # 'from core import labeling' style: a submodule
            importlib.import_module(name.rsplit(".", 1)[0])
        if "torch" in sys.modules:
            found = {{"page": page, "module": name}}
            break
    if found:
        break
print(json.dumps(found))
"""


def test_pages_draw_without_torch():
    pages = {p.name: page_imports(p) for p in sorted((ROOT / "app").glob("*.py"))
             if p.name in ("ui.py", "Home.py", "signin.py")}
    pages.update({p.name: page_imports(p) for p in sorted((ROOT / "app" / "views").glob("*.py"))
                  if p.name not in NEEDS_TORCH})
    assert "core.dashboard" in pages["0_Overview.py"] and "core.queue_view" in pages["6_Queue.py"]
    probe = _PROBE.format(root=str(ROOT), app=str(ROOT / "app"))
    out = subprocess.run([sys.executable, "-c", probe, json.dumps(pages)], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}


def test_the_probe_sees_torch(tmp_path):
    (tmp_path / "torch.py").write_text("")          # a stand-in: the real one takes seconds
    (tmp_path / "heavy.py").write_text("import torch\n")
    probe = _PROBE.format(root=str(ROOT), app=str(ROOT / "app"))
    out = subprocess.run([sys.executable, "-c", probe, json.dumps({"x": ["json", "heavy"]}),
                          str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"page": "x", "module": "heavy"}
