"""What an export folder holds: file names and the reports written beside the ONNX files.

Split out of :mod:`models.export` and :mod:`models.quantize` (which import torch and
onnxruntime) so the Export page can list downloads and show the parity and int8 reports without
loading either; both modules re-export these names.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

FP32_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"
PARITY_NAME = "parity.json"
INT8_REPORT_NAME = "int8_report.json"


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def load_parity(folder: str | Path) -> dict[str, Any] | None:
    """The last parity report written in an export folder, if any."""
    return _json(Path(folder) / PARITY_NAME)


def load_int8_report(folder: str | Path) -> dict[str, Any] | None:
    """The int8 report written in an export folder, if any."""
    return _json(Path(folder) / INT8_REPORT_NAME)


def find_export(folder: str | Path, prefer_int8: bool = True) -> Path | None:
    """The published ONNX file in an export folder (int8 first when asked and present), else None.

    Only published files are returned: rejected candidates and staging files never are.
    """
    order: Sequence[str] = (INT8_NAME, FP32_NAME) if prefer_int8 else (FP32_NAME, INT8_NAME)
    for name in order:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None
