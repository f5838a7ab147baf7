"""Pack a model's published ONNX export into a zip a Jetson needs nothing else to use.

Why a zip of scripts rather than an engine: TensorRT engines only run on the GPU model and
TensorRT version that built them, so the portable ONNX travels and the device builds its own
FP16 engine with ``build_engine.py``. The labels and preprocessing are written as plain JSON
(from the ONNX metadata, the single source) so the device scripts never parse ONNX themselves.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from models.export import ExportError, read_metadata
from models.onnx_contract import (META_BACKBONE, META_CREATED, META_MODEL_ID, META_OUTPUTS,
                                  META_PREPROCESS, META_SCHEMA, META_WEIGHTS_ORIGIN)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEVICE_FILES = ("common.py", "build_engine.py", "run_engine.py")
BUNDLE_FILES = ("model.onnx", "labels.json", "preprocess.json", *DEVICE_FILES, "README.md",
                "requirements-jetson.txt")


def bundle_name(model_id: int) -> str:
    return f"cargroup_jetson_model_{int(model_id)}"


def write_bundle_folder(onnx_path: str | Path, folder: str | Path) -> Path:
    """Fill ``folder`` with everything in :data:`BUNDLE_FILES` for ``onnx_path``."""
    onnx_path, folder = Path(onnx_path), Path(folder)
    meta = read_metadata(onnx_path)
    if META_SCHEMA not in meta or META_PREPROCESS not in meta:
        raise ExportError(f"{onnx_path} lacks Car Grouping metadata; export it with "
                          "`python -m core export`")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, folder / "model.onnx")
    labels = {"attributes": json.loads(meta[META_SCHEMA]),
              "outputs": json.loads(meta.get(META_OUTPUTS, "[]")),
              "model_id": meta.get(META_MODEL_ID, ""),
              "created_at": meta.get(META_CREATED, ""),
              "backbone": meta.get(META_BACKBONE, "resnet18"),
              "weights_origin": json.loads(meta.get(META_WEIGHTS_ORIGIN) or "null")}
    (folder / "labels.json").write_text(json.dumps(labels, indent=2), encoding="utf-8")
    (folder / "preprocess.json").write_text(json.dumps(json.loads(meta[META_PREPROCESS]), indent=2),
                                            encoding="utf-8")
    for name in DEVICE_FILES:
        shutil.copyfile(HERE / name, folder / name)
    shutil.copyfile(HERE / "README.md", folder / "README.md")
    shutil.copyfile(REPO / "requirements-jetson.txt", folder / "requirements-jetson.txt")
    return folder


def zip_folder(folder: Path, zip_path: Path, arcroot: str) -> Path:
    """Zip ``folder`` under ``arcroot/`` atomically (a reader never sees half a zip)."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{zip_path.name}.", suffix=".tmp", dir=zip_path.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name in sorted(p.name for p in folder.iterdir()):
                zf.write(folder / name, f"{arcroot}/{name}")
        os.replace(tmp, zip_path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return zip_path


def build_jetson_bundle(onnx_path: str | Path, model_id: int, out: str | Path) -> Path:
    """Zip for the Jetson from a published fp32 export; returns the zip path.

    ``out``: a ``.zip`` path, or a folder to put ``cargroup_jetson_model_<id>.zip`` in. The
    export must exist (and so has passed parity).
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ExportError(f"model {model_id} has no published ONNX export at {onnx_path}; "
                          "run `python -m core export` first")
    name = bundle_name(model_id)
    out_path = Path(out)
    zip_path = out_path if out_path.suffix == ".zip" else out_path / f"{name}.zip"
    with tempfile.TemporaryDirectory(prefix="cargroup-bundle-") as tmp:
        folder = write_bundle_folder(onnx_path, Path(tmp) / name)
        return zip_folder(folder, zip_path, name)
