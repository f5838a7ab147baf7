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
    """The published ONNX file to run: int8 when asked for and present, unless this model's
    measured latency table says int8 is slower than fp32 here (:func:`int8_slower`)."""
    return export_files.find_export(export_dir(ws, model_id),
                                    prefer_int8 and not int8_slower(ws, model_id))


def int8_slower(ws: Workspace, model_id: int) -> bool:
    """True when this model's latency table (measured on this machine) has int8 slower per
    image than fp32 at the largest batch both were timed at.

    Why: int8 is not always faster. EfficientNet-Lite0's int8 ran 4-7x slower than its fp32 on
    a CPU without VNNI (docs/BENCHMARKS.md, "EfficientNet-Lite0 beside ResNet18: latency"),
    while ResNet18's int8 was faster on the same CPU; so the choice follows the measurement,
    and int8 stays the default where nothing was measured.
    """
    per_image: dict[int, dict[str, float]] = {}
    for row in load_results(ws, model_id):
        try:
            per_image.setdefault(int(row["batch"]), {})[str(row["backend"])] = \
                float(row["ms per image"])
        except (KeyError, TypeError, ValueError):
            continue
    both = [b for b, t in per_image.items()
            if "ONNX Runtime fp32" in t and "ONNX Runtime int8" in t]
    if not both:
        return False
    t = per_image[max(both)]
    return t["ONNX Runtime int8"] > t["ONNX Runtime fp32"]


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
