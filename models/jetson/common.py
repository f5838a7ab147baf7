"""TensorRT-free helpers shared by the Jetson scripts: arguments, preprocessing, postprocessing.

This file is copied as-is into the Jetson bundle next to ``build_engine.py`` and
``run_engine.py``, so it imports only the standard library, numpy and Pillow (all present on
JetPack). It mirrors :mod:`data.preprocess` (square resize: area filter down, linear up; RGB;
ImageNet mean/std; NCHW float32) from the values in ``preprocess.json`` rather than importing
the project (or OpenCV), and the tests check both give the same tensors to within one grey level.
"""
from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_ENGINE = "model.fp16.engine"
DEFAULT_TIMING_CACHE = "timing.cache"


# -- bundle files ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preprocess:
    """What ``preprocess.json`` says a model input is."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1.0 / 255.0
    channel_order: str = "RGB"
    layout: str = "NCHW"
    resize: str = "square"
    input: str = "image"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Preprocess":
        spec = cls(size=int(data["size"]), mean=tuple(float(v) for v in data["mean"]),
                   std=tuple(float(v) for v in data["std"]), scale=float(data.get("scale", 1 / 255)),
                   channel_order=str(data.get("channel_order", "RGB")).upper(),
                   layout=str(data.get("layout", "NCHW")).upper(),
                   resize=str(data.get("resize", "square")), input=str(data.get("input", "image")))
        if spec.channel_order not in ("RGB", "BGR") or spec.layout != "NCHW" or spec.resize != "square":
            raise ValueError(f"unsupported preprocessing in preprocess.json: {dict(data)}")
        if len(spec.mean) != 3 or len(spec.std) != 3:
            raise ValueError("preprocess.json mean/std need three values (one per channel)")
        return spec


def load_preprocess(path: str | Path) -> Preprocess:
    return Preprocess.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def load_labels(path: str | Path) -> dict[str, list[str]]:
    """``labels.json``: {"attributes": {attribute: [class names in output order]}, ...}."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    attrs = data.get("attributes", data) if isinstance(data, dict) else None
    if not isinstance(attrs, dict) or not attrs or not all(isinstance(v, list) for v in attrs.values()):
        raise ValueError(f"{path} must map each attribute to its list of class names")
    return {str(a): [str(c) for c in names] for a, names in attrs.items()}


# -- preprocessing -----------------------------------------------------------------------------
def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 RGB (H, W, 3)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix: each output pixel averages the input span it covers (OpenCV INTER_AREA)."""
    scale = n_in / n_out
    lo = np.arange(n_out)[:, None] * scale
    hi = lo + scale
    j = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return overlap / scale


def _linear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of OpenCV INTER_LINEAR sampling (half-pixel centres, clamped edges)."""
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    left = np.floor(src).astype(np.int64)
    frac = src - left
    frac[left < 0] = 0.0
    left = np.clip(left, 0, n_in - 1)
    right = np.minimum(left + 1, n_in - 1)
    w = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(w, (rows, left), 1.0 - frac)
    np.add.at(w, (rows, right), frac)
    return w


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> (size, size, 3), the same filters as the trainer's OpenCV resize.

    Area averaging when shrinking both sides, bilinear otherwise (data/preprocess.py), written as
    separable weight matrices in numpy so the device needs no OpenCV; results match OpenCV to
    within one grey level (OpenCV rounds its bilinear weights to fixed point).
    """
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    weights = _area_weights if size < min(h, w) else _linear_weights
    wy, wx = weights(h, size), weights(w, size)
    out = np.einsum("ih,hwc,jw->ijc", wy, image.astype(np.float64), wx, optimize=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def normalise(images: np.ndarray | Sequence[np.ndarray], spec: Preprocess) -> np.ndarray:
    """uint8 RGB images (N, H, W, 3 or list of H, W, 3) -> float32 (N, 3, S, S) model input."""
    batch = np.stack([resize_square(np.asarray(img, dtype=np.uint8), spec.size) for img in images]) \
        if len(images) else np.zeros((0, spec.size, spec.size, 3), np.uint8)
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected RGB images, got shape {batch.shape}")
    if spec.channel_order == "BGR":
        batch = batch[..., ::-1]
    mean = np.asarray(spec.mean, np.float32) / np.float32(spec.scale)
    std = np.asarray(spec.std, np.float32) / np.float32(spec.scale)
    out = (batch.astype(np.float32) - mean) / std
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


# -- postprocessing ----------------------------------------------------------------------------
def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float32)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def postprocess(outputs: Mapping[str, np.ndarray], labels: Mapping[str, Sequence[str]],
                top_k: int = 1) -> list[dict[str, list[tuple[str, float]]]]:
    """Per image {attribute: [(class, probability), ... top_k]} from the logits outputs."""
    missing = [a for a in labels if a not in outputs]
    if missing:
        raise KeyError(f"engine has no output for {missing}; outputs: {sorted(outputs)}")
    n = len(next(iter(outputs[a] for a in labels)))
    result: list[dict[str, list[tuple[str, float]]]] = [{} for _ in range(n)]
    for attr, names in labels.items():
        logits = np.asarray(outputs[attr], np.float32).reshape(n, -1)
        if logits.shape[1] != len(names):
            raise ValueError(f"{attr}: engine gives {logits.shape[1]} classes, labels.json "
                             f"lists {len(names)}")
        probs = softmax(logits)
        order = np.argsort(-probs, axis=1)[:, :top_k]
        for i in range(n):
            result[i][attr] = [(names[int(k)], float(probs[i, k])) for k in order[i]]
    return result


def format_prediction(name: str, prediction: Mapping[str, list[tuple[str, float]]]) -> str:
    """One readable line: ``file  color=red (0.93)  type=suv (0.71) ...``."""
    parts = [f"{a}={top[0][0]} ({top[0][1]:.2f})" for a, top in prediction.items()]
    return f"{name}  " + "  ".join(parts)


# -- inputs, batching, timing ------------------------------------------------------------------
def list_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given plus every image inside given folders (sorted, recursive)."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found.extend(sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"no such image or folder: {p}")
    return found


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def latency_summary(ms: Sequence[float]) -> dict[str, float]:
    """Median / p90 / mean / min of per-call latencies in milliseconds."""
    if not ms:
        return {"n": 0}
    ordered = sorted(ms)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {"n": len(ms), "median_ms": statistics.median(ordered), "p90_ms": p90,
            "mean_ms": statistics.fmean(ordered), "min_ms": ordered[0]}


def parse_batch_profile(text: str) -> tuple[int, int, int]:
    """``"1,8,32"`` -> (min, opt, max) batch sizes of the TensorRT optimisation profile."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"batch profile must be MIN,OPT,MAX integers: {text!r}") from exc
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise argparse.ArgumentTypeError(f"batch profile needs 1 <= MIN <= OPT <= MAX, got {text!r}")
    return values  # type: ignore[return-value]


# -- command lines -----------------------------------------------------------------------------
def build_engine_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build_engine.py",
        description="Build a TensorRT engine (FP16 where the GPU supports it) from model.onnx.")
    p.add_argument("--onnx", default="model.onnx", help="ONNX model (default: model.onnx)")
    p.add_argument("--engine", default=DEFAULT_ENGINE, help=f"output engine (default: {DEFAULT_ENGINE})")
    p.add_argument("--preprocess", default="preprocess.json",
                   help="gives the input size and tensor name (default: preprocess.json)")
    p.add_argument("--batch", type=parse_batch_profile, default=(1, 8, 32),
                   help="optimisation profile MIN,OPT,MAX batch sizes (default: 1,8,32)")
    p.add_argument("--fp32", action="store_true", help="do not enable FP16 kernels")
    p.add_argument("--workspace-mb", type=int, default=1024,
                   help="builder workspace memory limit in MiB (default: 1024)")
    p.add_argument("--timing-cache", default=DEFAULT_TIMING_CACHE,
                   help="timing cache file, reused and updated (default: timing.cache; '' = none)")
    p.add_argument("--verbose", action="store_true", help="verbose TensorRT log")
    return p


def run_engine_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_engine.py",
        description="Classify images with a TensorRT engine; prints per-image predictions and latency.")
    p.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--engine", default=DEFAULT_ENGINE, help=f"engine file (default: {DEFAULT_ENGINE})")
    p.add_argument("--labels", default="labels.json")
    p.add_argument("--preprocess", default="preprocess.json")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images per inference call, within the engine's profile (default: 1)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up calls (default: 5)")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--json", default=None, help="also write predictions and latency to this JSON file")
    p.add_argument("--quiet", action="store_true", help="only print the latency summary")
    return p
