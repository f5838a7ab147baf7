"""Static int8 quantization of a published ONNX export for CPUs, with its accuracy cost measured.

Why static QDQ per-channel: activations quantized with ranges calibrated on real pool images
let onnxruntime run the convolutions as int8 kernels (VNNI on modern x86), several times faster
than fp32; per-channel weight scales keep ResNet accuracy close to fp32 where a single scale per
tensor would not.

Why the weight type depends on the CPU (:func:`default_weight_type`): on x86 without VNNI
(AVX2 / AVX-512 without ``avx512_vnni`` / ``avx_vnni``) onnxruntime runs uint8 x int8 (U8S8)
products with ``vpmaddubsw``, which saturates its 16-bit pair sums (255 * 127 * 2 > 32767).
Measured on EfficientNet-Lite0 (ReLU6 activations sit near the top of their uint8 range, 1x1
convolutions with 16-1,152 input channels): top-1 agreement with fp32 fell from 0.78-0.87 with the
same QDQ graph run unfused (float kernels, i.e. the quantization error alone) to 0.46-0.66 with
the fused int8 kernels. uint8 weights (U8U8) use a non-saturating kernel and agree with the unfused
figures; ``reduce_range`` (7-bit weights, onnxruntime's other remedy) also avoids the
saturation but lost 0.1-0.15 agreement to the coarser weights. With VNNI (``vpdpbusd``, 32-bit
sums) U8S8 does not saturate and is the fast path, so it stays the choice there; on ARM it is
S8S8. See docs/BENCHMARKS.md "int8 fidelity". The cost is measured, not assumed: per-head accuracy on the labelled test split
for fp32 and int8, plus top-1 agreement between the two, saved next to the model as
``int8_report.json``. An int8 file that disagrees with fp32 beyond the thresholds is refused
(kept as ``model.int8.onnx.rejected``), so pool scoring never picks up a broken one through
:func:`models.export.find_export`.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from data.preprocess import normalise_batch
from models.export import ExportError, read_metadata, set_metadata
from models.export_files import INT8_NAME, load_int8_report  # noqa: F401 - re-exported
from models.export_files import INT8_REPORT_NAME as REPORT_NAME
from models.onnx_contract import INPUT_NAME, META_PARITY, META_PRECISION, META_QUANTIZATION
from models.onnx_runtime import OnnxClassifier

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION = 300
DEFAULT_MIN_AGREEMENT = 0.90     # per head, int8 vs fp32 top-1 on the evaluation images
DEFAULT_MAX_DROP = 0.02          # per head accuracy drop allowed before refusing
MIN_LABELS_FOR_DROP_GATE = 200   # below this a 2-point drop is a handful of images: report only
CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}


class QuantizationError(ExportError):
    """The int8 model cannot be made or disagrees with fp32 too much; not published."""


class CacheCalibrationReader(CalibrationDataReader):
    """Feeds calibration batches of uint8 pool images through the shared preprocessing.

    Batches are normalised lazily so a few hundred images never sit in memory as float32 at once.
    Every batch has the same size: onnxruntime's histogram calibrators (percentile, entropy)
    stack the per-batch outputs into one array and fail on a ragged last batch, so the tail
    beyond a whole number of batches is left out (at most ``batch_size - 1`` images; with fewer
    images than one batch, they form the only batch).
    """

    def __init__(self, images: np.ndarray, image_size: int, *, batch_size: int = 16,
                 input_name: str = INPUT_NAME) -> None:
        if len(images) == 0:
            raise QuantizationError("calibration needs at least one pool image in the cache")
        self.batch_size = min(int(batch_size), len(images))
        self.images = images[:len(images) - len(images) % self.batch_size]
        self.image_size = int(image_size)
        self.input_name = input_name
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= len(self.images):
            return None
        chunk = np.asarray(self.images[self._pos:self._pos + self.batch_size])
        self._pos += self.batch_size
        return {self.input_name: normalise_batch(chunk, self.image_size)}

    def rewind(self) -> None:
        self._pos = 0

    def __len__(self) -> int:
        return len(self.images) // self.batch_size


def _cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (empty elsewhere: treated as 'no VNNI')."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_vnni(flags: set[str] | None = None) -> bool:
    """True when the CPU has 8-bit dot-product instructions with 32-bit sums (x86 VNNI)."""
    flags = _cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_vnni", "avx_vnni", "avx_vnni_int8"})


def default_weight_type(machine: str | None = None, flags: set[str] | None = None) -> QuantType:
    """int8 weights where the kernels do not saturate (ARM, x86 with VNNI), uint8 otherwise.

    Why: see the module docstring (U8S8 saturation on x86 without VNNI).
    """
    machine = (machine or platform.machine()).lower()
    if machine.startswith(("arm", "aarch")) or has_vnni(flags):
        return QuantType.QInt8
    return QuantType.QUInt8


def default_activation_type() -> QuantType:
    """uint8 activations on x86 (onnxruntime's advice for VNNI and non-VNNI), int8 on ARM."""
    machine = platform.machine().lower()
    return QuantType.QInt8 if machine.startswith(("arm", "aarch")) else QuantType.QUInt8


def quantize_onnx(fp32_path: str | Path, out_path: str | Path, calibration_images: np.ndarray,
                  image_size: int, *, calibrate_method: str = "minmax", per_channel: bool = True,
                  activation_type: QuantType | None = None,
                  weight_type: QuantType | None = None) -> Path:
    """Write a static QDQ int8 model of ``fp32_path`` to ``out_path`` (metadata carried over).

    ``quant_pre_process`` (shape inference + graph optimisation) runs first, as onnxruntime
    recommends, so quantization sees the fused graph the CPU runs.
    """
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if calibrate_method not in CALIBRATION_METHODS:
        raise QuantizationError(f"unknown calibration method {calibrate_method!r}; "
                                f"choose one of {sorted(CALIBRATION_METHODS)}")
    act = activation_type or default_activation_type()
    wt = weight_type or default_weight_type()
    reader = CacheCalibrationReader(calibration_images, image_size)
    with tempfile.TemporaryDirectory(prefix="cargroup-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        staged = Path(tmp) / "int8.onnx"
        quantize_static(str(pre), str(staged), reader, quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, reduce_range=False, activation_type=act,
                        weight_type=wt,
                        calibrate_method=CALIBRATION_METHODS[calibrate_method])
        proto = onnx.load(str(staged))
        props = read_metadata(fp32_path)
        props.pop(META_PARITY, None)  # parity was measured for fp32, not this file
        props[META_PRECISION] = "int8"
        props[META_QUANTIZATION] = json.dumps({
            "format": "QDQ", "per_channel": per_channel,
            "weights": "uint8" if wt == QuantType.QUInt8 else "int8",
            "activations": "uint8" if act == QuantType.QUInt8 else "int8",
            "calibration": calibrate_method, "calibration_images": int(len(reader.images))})
        set_metadata(proto, props, replace=True)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out_path.with_name(f".staging-{os.getpid()}-{out_path.name}")
        onnx.save(proto, str(tmp_out))
        os.replace(tmp_out, out_path)
    return out_path


@dataclass
class Int8Report:
    """fp32 vs int8 per head: accuracy on labelled test images and top-1 agreement."""

    n_eval_images: int
    n_labelled: dict[str, int]
    accuracy_fp32: dict[str, float | None]
    accuracy_int8: dict[str, float | None]
    delta: dict[str, float | None]          # int8 - fp32, in accuracy fraction
    agreement: dict[str, float]             # int8 top-1 == fp32 top-1 on all eval images
    calibration_images: int
    max_abs_prob_diff: dict[str, float] = field(default_factory=dict)  # max |p_int8 - p_fp32|
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    def table(self) -> str:
        """Markdown table of the figures (used by the CLI and docs)."""
        rows = ["| head | labelled test images | fp32 acc | int8 acc | delta (points) | agreement "
                "| max abs prob diff |", "|---|---|---|---|---|---|---|"]
        fmt = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        for a in self.agreement:
            d = self.delta[a]
            rows.append(f"| {a} | {self.n_labelled[a]} | {fmt(self.accuracy_fp32[a])} | "
                        f"{fmt(self.accuracy_int8[a])} | {'n/a' if d is None else f'{100 * d:+.1f}'} "
                        f"| {100 * self.agreement[a]:.1f}% "
                        f"| {self.max_abs_prob_diff.get(a, float('nan')):.3f} |")
        return "\n".join(rows)


def compare_models(fp32_path: str | Path, int8_path: str | Path, images: np.ndarray,
                   labels: Mapping[str, np.ndarray], *, calibration_images: int = 0,
                   min_agreement: float = DEFAULT_MIN_AGREEMENT,
                   max_drop: float = DEFAULT_MAX_DROP,
                   min_labels_for_drop_gate: int = MIN_LABELS_FOR_DROP_GATE) -> Int8Report:
    """Predict ``images`` with both models; ``labels[attr]`` holds class indices, -1 = unlabelled."""
    fp32, int8 = OnnxClassifier(fp32_path), OnnxClassifier(int8_path)
    p32, _ = fp32.predict(images)
    p8, _ = int8.predict(images)
    n_lab, acc32, acc8, delta, agree, dprob = {}, {}, {}, {}, {}, {}
    failures: list[str] = []
    for a in fp32.attributes:
        y32, y8 = p32[a].argmax(1), p8[a].argmax(1)
        agree[a] = float(np.mean(y32 == y8)) if len(images) else 1.0
        dprob[a] = float(np.max(np.abs(p32[a] - p8[a]))) if len(images) else 0.0
        truth = np.asarray(labels.get(a, np.full(len(images), -1)))
        mask = truth >= 0
        n_lab[a] = int(mask.sum())
        if n_lab[a]:
            acc32[a] = float(np.mean(y32[mask] == truth[mask]))
            acc8[a] = float(np.mean(y8[mask] == truth[mask]))
            delta[a] = acc8[a] - acc32[a]
        else:
            acc32[a] = acc8[a] = delta[a] = None
        if agree[a] < min_agreement:
            failures.append(f"{a}: int8/fp32 agreement {agree[a]:.1%} < {min_agreement:.0%}")
        if delta[a] is not None and n_lab[a] >= min_labels_for_drop_gate and -delta[a] > max_drop:
            failures.append(f"{a}: int8 accuracy {100 * -delta[a]:.1f} points below fp32 "
                            f"(limit {100 * max_drop:.1f})")
    return Int8Report(n_eval_images=int(len(images)), n_labelled=n_lab, accuracy_fp32=acc32,
                      accuracy_int8=acc8, delta=delta, agreement=agree,
                      calibration_images=int(calibration_images), max_abs_prob_diff=dprob,
                      failures=failures)


def publish_int8(fp32_path: str | Path, folder: str | Path, calibration_images: np.ndarray,
                 eval_images: np.ndarray, labels: Mapping[str, np.ndarray], *,
                 calibrate_method: str = "minmax", min_agreement: float = DEFAULT_MIN_AGREEMENT,
                 max_drop: float = DEFAULT_MAX_DROP) -> tuple[Path, Int8Report]:
    """Quantize ``fp32_path``, compare on ``eval_images``, publish ``folder/model.int8.onnx``.

    Writes ``int8_report.json`` either way; a failing report keeps the candidate as
    ``model.int8.onnx.rejected`` and raises :class:`QuantizationError` (nothing published).
    """
    folder = Path(folder)
    if len(calibration_images) == 0:
        raise QuantizationError("no train/val pool images in the cache to calibrate on")
    fp32 = OnnxClassifier(fp32_path)
    candidate = folder / (INT8_NAME + ".candidate")
    quantize_onnx(fp32_path, candidate, calibration_images, fp32.image_size,
                  calibrate_method=calibrate_method)
    report = compare_models(fp32_path, candidate, eval_images, labels,
                            calibration_images=len(calibration_images),
                            min_agreement=min_agreement, max_drop=max_drop)
    (folder / REPORT_NAME).write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    if not report.passed:
        os.replace(candidate, folder / (INT8_NAME + ".rejected"))
        raise QuantizationError("int8 export refused: " + "; ".join(report.failures))
    final = folder / INT8_NAME
    os.replace(candidate, final)
    return final, report
