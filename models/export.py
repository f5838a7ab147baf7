"""ONNX export with a parity gate: an export is published only when it computes what PyTorch does.

Why a gate: an ONNX file that silently differs from the trained network (a wrong opset lowering,
a stale or corrupted file) would mislabel images in CVAT auto-annotation and skew pool scoring
without anyone noticing. So every export is written to a staging file, run through onnxruntime
on real pool images from the cache next to the PyTorch model, and moved to its published path
(``<export folder>/model.onnx``, see :mod:`core.exports`) only when the logits agree (max abs difference and
per-head argmax agreement within thresholds). A failing file is kept beside it as
``model.onnx.rejected`` for inspection and a :class:`ParityError` names the figures.

The ONNX contract other parts rely on (CVAT auto-annotation, pool scoring, the Jetson bundle):
- input ``image``: float32 N x 3 x S x S, normalised as in :mod:`data.preprocess`, dynamic N;
- outputs: one logits tensor per attribute, named by the attribute, plus ``embedding`` (N x D,
  the penultimate features: D = 512 for ResNet18, 1280 for EfficientNet-Lite0);
- ``metadata_props``: ``cargroup.schema`` (JSON {attribute: [class names]}),
  ``cargroup.preprocess`` (JSON size/mean/std/scale/channel order/layout/resize), model id and
  creation info, ``cargroup.backbone`` and ``cargroup.weights_origin`` (JSON backbone/kind/detail:
  where the backbone's starting weights came from), and the parity figures. A consumer needs
  nothing else.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from data.errors import UserError
from data.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalise_batch
from models.backbones import DEFAULT_BACKBONE
from models.network import MultiHeadNet
from models.export_files import (FP32_NAME, INT8_NAME, PARITY_NAME,  # noqa: F401 - re-exported
                                 find_export, load_parity)
from models.onnx_contract import (EMBEDDING_NAME, INPUT_NAME, META_BACKBONE, META_CREATED,
                                  META_EXPORTER, META_MODEL_ID, META_OUTPUTS, META_PARITY,
                                  META_PRECISION, META_PREPROCESS, META_SCHEMA,
                                  META_WEIGHTS_ORIGIN)
from models.onnx_runtime import OnnxClassifier

log = logging.getLogger(__name__)

# Opset 17 is the newest that TensorRT 8.5 (JetPack 5) parses, and ORT runs it everywhere.
ONNX_OPSET = 17

# File names and the report readers live in models.export_files (no torch), re-exported here.

# Defaults for the parity gate. fp32 ORT vs PyTorch normally differs by ~1e-6 relative to the
# logits' size; 1e-3 of it already means a different computation, not float rounding.
DEFAULT_MAX_ABS_DIFF = 1e-3
DEFAULT_MIN_AGREEMENT = 0.99
DEFAULT_PARITY_IMAGES = 64


class ExportError(UserError):
    """An export that cannot be made or must not be published (printed as one line by the CLI)."""


class ParityError(ExportError):
    """The ONNX model's outputs differ from PyTorch's beyond the thresholds; not published."""

    def __init__(self, message: str, report: "ParityReport") -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ParityReport:
    """PyTorch vs onnxruntime on the same normalised batch, per head."""

    n_images: int
    max_abs_diff: dict[str, float]
    logit_scale: dict[str, float]           # max(1, max |PyTorch logit|); the diff limit scales by it
    argmax_agreement: dict[str, float]
    embedding_max_abs_diff: float
    threshold_max_abs_diff: float
    threshold_min_agreement: float
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    def summary(self) -> str:
        heads = ", ".join(f"{a}: max|d|={self.max_abs_diff[a]:.2e} argmax={self.argmax_agreement[a]:.1%}"
                          for a in self.max_abs_diff)
        return (f"parity on {self.n_images} pool images: {heads}; "
                f"embedding max|d|={self.embedding_max_abs_diff:.2e}")


class _OnnxHeads(nn.Module):
    """Tuple-returning view of :class:`MultiHeadNet` (ONNX outputs are positional)."""

    def __init__(self, model: MultiHeadNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, emb = self.model.forward_with_embedding(x)
        return (*(logits[a] for a in self.model.attributes), emb)


# -- metadata ----------------------------------------------------------------------------------
def preprocess_spec(image_size: int) -> dict[str, Any]:
    """The preprocessing a consumer must apply, as stored in the model (mirrors data.preprocess)."""
    return {"size": int(image_size), "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "scale": 1.0 / 255.0, "channel_order": "RGB", "layout": "NCHW", "resize": "square",
            "dtype": "float32", "input": INPUT_NAME}


def set_metadata(model_proto: onnx.ModelProto, props: Mapping[str, str], *,
                 replace: bool = False) -> None:
    """Merge string properties into ``metadata_props`` (or replace them all when ``replace``)."""
    merged = {} if replace else {p.key: p.value for p in model_proto.metadata_props}
    merged.update({k: str(v) for k, v in props.items()})
    del model_proto.metadata_props[:]
    for key, value in merged.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file as a dict (weights are not loaded)."""
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def export_metadata(model: MultiHeadNet, image_size: int, model_id: int | None,
                    extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The metadata a published export carries (see module docstring)."""
    origin = getattr(model, "weights_origin", None)
    props = {
        META_SCHEMA: json.dumps({a: list(model.class_names[a]) for a in model.attributes}),
        META_PREPROCESS: json.dumps(preprocess_spec(image_size)),
        META_OUTPUTS: json.dumps([*model.attributes, EMBEDDING_NAME]),
        META_MODEL_ID: "" if model_id is None else str(model_id),
        META_CREATED: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        META_EXPORTER: f"torch {torch.__version__} / onnx {onnx.__version__} / opset {ONNX_OPSET}",
        META_PRECISION: "fp32",
        META_BACKBONE: getattr(model, "backbone_name", DEFAULT_BACKBONE),
        META_WEIGHTS_ORIGIN: json.dumps(origin.to_dict() if origin is not None else None),
    }
    for k, v in (extra or {}).items():
        props[k] = v if isinstance(v, str) else json.dumps(v)
    return props


# -- export and parity -------------------------------------------------------------------------
def torch_to_onnx(model: MultiHeadNet, path: str | Path, image_size: int) -> Path:
    """Trace the model to ONNX with a dynamic batch axis (no metadata, no checks).

    The TorchScript-based exporter is used on purpose: it lowers both backbones to plain opset-17 ops
    (Conv with BatchNorm folded, Gemm) that TensorRT 8.x on JetPack parses, and it needs no
    onnxscript.
    """
    path = Path(path)
    model = model.eval()
    dummy = torch.zeros(2, 3, image_size, image_size)
    outputs = [*model.attributes, EMBEDDING_NAME]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(_OnnxHeads(model), (dummy,), str(path), dynamo=False,
                          input_names=[INPUT_NAME], output_names=outputs,
                          dynamic_axes={n: {0: "batch"} for n in [INPUT_NAME, *outputs]},
                          opset_version=ONNX_OPSET)
    return path


def _torch_outputs(model: MultiHeadNet, batch: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    with torch.no_grad():
        logits, emb = model.eval().forward_with_embedding(torch.from_numpy(batch))
    return {a: v.numpy() for a, v in logits.items()}, emb.numpy()


def check_parity(model: MultiHeadNet, onnx_path: str | Path, images: np.ndarray, image_size: int,
                 *, max_abs_diff: float = DEFAULT_MAX_ABS_DIFF,
                 min_agreement: float = DEFAULT_MIN_AGREEMENT, batch_size: int = 32) -> ParityReport:
    """Run PyTorch and onnxruntime on the same uint8 NHWC images and compare per head.

    Both see the output of :func:`data.preprocess.normalise_batch`, so only the network is
    compared. Fails on an empty image set: an unverified export is not a verified one.
    """
    if len(images) == 0:
        raise ExportError("parity check needs at least one pool image in the cache")
    ort_model = OnnxClassifier(onnx_path)
    missing = [a for a in model.attributes if a not in ort_model.attributes]
    if missing:
        raise ExportError(f"{onnx_path} has no output for {missing}")
    diffs = {a: 0.0 for a in model.attributes}
    scale = {a: 1.0 for a in model.attributes}
    agree = {a: 0 for a in model.attributes}
    emb_diff, emb_scale = 0.0, 1.0
    for start in range(0, len(images), batch_size):
        batch = normalise_batch(np.asarray(images[start:start + batch_size]), image_size)
        t_logits, t_emb = _torch_outputs(model, batch)
        o_logits, o_emb = ort_model.run(batch)
        for a in model.attributes:
            diffs[a] = max(diffs[a], float(np.max(np.abs(t_logits[a] - o_logits[a]))))
            scale[a] = max(scale[a], float(np.max(np.abs(t_logits[a]))))
            agree[a] += int(np.sum(t_logits[a].argmax(1) == o_logits[a].argmax(1)))
        emb_diff = max(emb_diff, float(np.max(np.abs(t_emb - o_emb))))
        emb_scale = max(emb_scale, float(np.max(np.abs(t_emb))))
    n = len(images)
    agreement = {a: agree[a] / n for a in model.attributes}
    # Float rounding grows with the logits' size: the limit is relative to max(1, max |logit|).
    failures = [f"{a}: max abs logit diff {diffs[a]:.3g} > {max_abs_diff * scale[a]:.3g}"
                for a in model.attributes if not diffs[a] <= max_abs_diff * scale[a]]
    failures += [f"{a}: argmax agreement {agreement[a]:.1%} < {min_agreement:.1%}"
                 for a in model.attributes if agreement[a] < min_agreement]
    # The embedding feeds diversity sampling; its tolerance scales with its magnitude.
    if not emb_diff <= max_abs_diff * emb_scale:
        failures.append(f"embedding: max abs diff {emb_diff:.3g} > {max_abs_diff * emb_scale:.3g}")
    return ParityReport(n_images=n, max_abs_diff=diffs, logit_scale=scale, argmax_agreement=agreement,
                        embedding_max_abs_diff=emb_diff, threshold_max_abs_diff=max_abs_diff,
                        threshold_min_agreement=min_agreement, failures=failures)


def publish_onnx(model: MultiHeadNet, out_dir: str | Path, parity_images: np.ndarray,
                 image_size: int, *, model_id: int | None = None,
                 extra_metadata: Mapping[str, Any] | None = None,
                 max_abs_diff: float = DEFAULT_MAX_ABS_DIFF,
                 min_agreement: float = DEFAULT_MIN_AGREEMENT) -> tuple[Path, ParityReport]:
    """Export ``model`` into ``out_dir/model.onnx`` only if it passes the parity gate.

    Steps: trace to a staging file, add metadata, ``onnx.checker``, parity via onnxruntime,
    then an atomic rename. A failed gate leaves any earlier published file untouched, keeps the
    candidate as ``model.onnx.rejected`` and raises :class:`ParityError`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".staging-{os.getpid()}-{FP32_NAME}"
    final = out_dir / FP32_NAME
    try:
        torch_to_onnx(model, staging, image_size)
        proto = onnx.load(str(staging))
        set_metadata(proto, export_metadata(model, image_size, model_id, extra_metadata))
        onnx.checker.check_model(proto)
        onnx.save(proto, str(staging))
        report = check_parity(model, staging, parity_images, image_size,
                              max_abs_diff=max_abs_diff, min_agreement=min_agreement)
        (out_dir / PARITY_NAME).write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
        if not report.passed:
            os.replace(staging, out_dir / (FP32_NAME + ".rejected"))
            raise ParityError("ONNX export refused, parity failed: " + "; ".join(report.failures)
                              + f" (candidate kept at {out_dir / (FP32_NAME + '.rejected')})",
                              report)
        set_metadata(proto, {META_PARITY: json.dumps(
            {"n_images": report.n_images, "max_abs_diff": report.max_abs_diff,
             "argmax_agreement": report.argmax_agreement})})
        onnx.save(proto, str(staging))
        os.replace(staging, final)
    finally:
        staging.unlink(missing_ok=True)
    log.info("published %s (%s)", final, report.summary())
    return final, report


def copy_artifacts(paths: Sequence[str | Path], out_dir: str | Path) -> list[Path]:
    """Copy exported files into ``out_dir`` (created if needed); returns the copies' paths.

    Why copies: the published files stay in ``exports/model_<id>/`` where pool scoring and the
    app find them, while ``--out`` hands the user one folder holding everything a run made. Each
    copy lands under a temporary name first and is renamed, so a reader never sees half a file.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; give a folder (or a .zip path for the bundle)")
    out.mkdir(parents=True, exist_ok=True)
    copies = []
    for src in map(Path, paths):
        dst = out / src.name
        if dst.resolve() == src.resolve():
            copies.append(dst)
            continue
        tmp = out / f".{src.name}.partial"
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
        copies.append(dst)
    return copies
