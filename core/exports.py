"""Exports of recorded models: the workspace side of ONNX, int8 and the Jetson bundle.

Why here: the exporters in :mod:`models` take a model, images and a folder. Which model id is
meant (default: the current one), which pool images calibrate or check it, and where a model's
exports live (``exports/model_<id>/``) are questions about the project store, answered here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from data.cache import ImageCache
from data.dataset import encode_targets
from data.schema import LabelSchema
from data.workspace import Workspace
from core.export_files import (export_dir, find_export, int8_slower, load_int8_report,  # noqa: F401
                               load_parity)
from core.registry import load_model
from models import export as onnx_export
from models import quantize
from models.export import (DEFAULT_MAX_ABS_DIFF, DEFAULT_MIN_AGREEMENT, DEFAULT_PARITY_IMAGES,
                           FP32_NAME, ExportError)
from models.jetson import bundle
from models.network import MultiHeadResNet
from models.onnx_runtime import OnnxClassifier
from models.quantize import DEFAULT_CALIBRATION, DEFAULT_MAX_DROP, Int8Report, QuantizationError


def resolve_model_id(ws: Workspace, model_id: int | None) -> int:
    """``model_id`` checked against the store, or the current model's id."""
    with ws.store() as store:
        models = {int(m["id"]): m for m in store.models()}
        current = store.current_model()
    if model_id is None:
        if current is None:
            raise ExportError("no current model to export; train one first (python -m core train)")
        return int(current["id"])
    if int(model_id) not in models:
        raise ExportError(f"no model with id {model_id} (known: {sorted(models) or 'none'})")
    return int(model_id)


def load_for_export(ws: Workspace, model_id: int) -> tuple[MultiHeadResNet, int]:
    """(eval-mode model, input size) through the checkpoint loader."""
    model, meta = load_model(ws, model_id)
    return model.eval(), int(meta.get("image_size") or ws.config.cache_size)


def pool_images(ws: Workspace, n: int, *, split: str | None = None, seed: int = 0,
                ) -> tuple[list[int], np.ndarray]:
    """Up to ``n`` cached pool images (ids, uint8 NHWC), a seeded random spread over the pool."""
    with ws.store() as store:
        records = [r for r in store.images(split=split) if r.cache_row is not None]
    if n < len(records):
        pick = np.sort(np.random.default_rng(seed).choice(len(records), size=n, replace=False))
        records = [records[i] for i in pick]
    cache = ImageCache(ws.cache_dir, ws.config.cache_size)
    return [r.id for r in records], cache.read([r.cache_row for r in records])


def export_onnx(ws: Workspace, model_id: int | None = None, *,
                parity_images: int = DEFAULT_PARITY_IMAGES,
                max_abs_diff: float = DEFAULT_MAX_ABS_DIFF,
                min_agreement: float = DEFAULT_MIN_AGREEMENT) -> Path:
    """Export a recorded model (default: current) to ``exports/model_<id>/model.onnx``.

    Raises :class:`models.export.ParityError` (nothing published) when onnxruntime disagrees
    with PyTorch on ``parity_images`` real pool images from the cache.
    """
    model_id = resolve_model_id(ws, model_id)
    model, size = load_for_export(ws, model_id)
    _, images = pool_images(ws, parity_images)
    path, _ = onnx_export.publish_onnx(model, export_dir(ws, model_id), images, size,
                                       model_id=model_id, max_abs_diff=max_abs_diff,
                                       min_agreement=min_agreement)
    return path


def labelled_test_split(ws: Workspace, schema: Mapping[str, list[str]], n_max: int | None = None,
                        ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Cached test-split images with a current label, and per-head class indices (-1: none)."""
    with ws.store() as store:
        labelled = store.current_labels(split="test")
        records = [r for r in store.images(ids=sorted(labelled)) if r.cache_row is not None]
    if n_max is not None and len(records) > n_max:
        pick = np.sort(np.random.default_rng(0).choice(len(records), n_max, replace=False))
        records = [records[i] for i in pick]
    heads = LabelSchema(classes={a: tuple(names) for a, names in schema.items()})
    targets = encode_targets([labelled[r.id] for r in records], heads)
    labels = {a: targets[:, col] for col, a in enumerate(heads.attributes)}
    images = ImageCache(ws.cache_dir, ws.config.cache_size).read([r.cache_row for r in records])
    return images, labels


def quantize_export(ws: Workspace, model_id: int | None = None, *,
                    calibration: int = DEFAULT_CALIBRATION, calibrate_method: str = "minmax",
                    eval_max: int | None = None,
                    min_agreement: float = quantize.DEFAULT_MIN_AGREEMENT,
                    max_drop: float = DEFAULT_MAX_DROP) -> tuple[Path, Int8Report]:
    """int8 version of a model's published fp32 export, checked against the test split.

    Calibration uses ``calibration`` train/val pool images (never test images, which measure
    the result); without labelled test images the check is int8/fp32 agreement on pool images.
    """
    model_id = resolve_model_id(ws, model_id)
    folder = export_dir(ws, model_id)
    fp32_path = folder / FP32_NAME
    if not fp32_path.is_file():
        raise QuantizationError(f"model {model_id} has no published fp32 export at {fp32_path}; "
                                "run `python -m core export` first")
    calib = np.concatenate([pool_images(ws, calibration, split=s, seed=1)[1]
                            for s in ("train", "val")])
    if len(calib) > calibration:
        calib = calib[np.random.default_rng(1).choice(len(calib), calibration, replace=False)]
    images, labels = labelled_test_split(ws, OnnxClassifier(fp32_path).schema, eval_max)
    if len(images) == 0:  # nothing labelled in test yet: agreement on pool images only
        _, images = pool_images(ws, 256, seed=2)
        labels = {}
    return quantize.publish_int8(fp32_path, folder, calib, images, labels,
                                 calibrate_method=calibrate_method, min_agreement=min_agreement,
                                 max_drop=max_drop)


def build_jetson_bundle(ws: Workspace, model_id: int | None = None,
                        out: str | Path | None = None) -> Path:
    """The Jetson zip of a model's published export (default folder: its export folder)."""
    model_id = resolve_model_id(ws, model_id)
    folder = export_dir(ws, model_id)
    return bundle.build_jetson_bundle(folder / FP32_NAME, model_id,
                                      out if out is not None else folder)
