"""Where a recorded model's exports live and what the Export page reads from there.

Torch-free on purpose (see docs/ARCHITECTURE.md, "Torch-free pages"): the Export page lists the
downloads and shows the parity, int8 and latency reports without loading torch or
onnxruntime. :mod:`core.exports` and :mod:`core.latency` produce these files and re-export the
names.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data.workspace import Workspace
from models import export_files

RESULTS_NAME = "latency.json"


def export_dir(ws: Workspace, model_id: int) -> Path:
    """Where every export of one model lives."""
    return ws.exports_dir / f"model_{int(model_id)}"


def load_parity(ws: Workspace, model_id: int) -> dict[str, Any] | None:
    return export_files.load_parity(export_dir(ws, model_id))


def find_export(ws: Workspace, model_id: int, prefer_int8: bool = True) -> Path | None:
    return export_files.find_export(export_dir(ws, model_id), prefer_int8)


def load_int8_report(ws: Workspace, model_id: int) -> dict[str, Any] | None:
    return export_files.load_int8_report(export_dir(ws, model_id))


def results_path(ws: Workspace, model_id: int) -> Path:
    """The latency table of a model's exports."""
    return export_dir(ws, model_id) / RESULTS_NAME


def load_results(ws: Workspace, model_id: int) -> list[dict[str, Any]]:
    """The last saved latency rows of a model ([] when never measured)."""
    path = results_path(ws, model_id)
    if not path.is_file():
        return []
    return list(json.loads(path.read_text(encoding="utf-8")).get("rows", []))
