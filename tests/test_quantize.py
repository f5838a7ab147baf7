"""int8 QDQ quantization: calibration reader, int8 model runs and agrees with fp32, report saved,
refusal when thresholds fail, find_export picks int8; on both backbones."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnxruntime.quantization import QuantType

from data.preprocess import normalise_batch
from core import exports as cx
from models import export as ex
from models import quantize as q
from models.onnx_runtime import OnnxClassifier
from tests.export_helpers import BACKBONES, SIZE, make_trained_workspace


@pytest.fixture(scope="module", params=BACKBONES)
def exported(request, tmp_path_factory):
    torch.set_num_threads(1)
    ws, model_id = make_trained_workspace(tmp_path_factory.mktemp("quant") / "ws",
                                          backbone=request.param)
    cx.export_onnx(ws, parity_images=16)
    return ws, model_id


@pytest.fixture(scope="module")
def quantized(exported):
    ws, model_id = exported
    # The color head is trained; the others saw random labels, so their near-tie logits flip
    # more easily under int8: the gate here is checked per head below instead.
    return cx.quantize_export(ws, calibration=48, min_agreement=0.5)


def test_calibration_reader_feeds_shared_preprocessing(rng) -> None:
    images = rng.integers(0, 256, (37, SIZE, SIZE, 3), dtype=np.uint8)
    reader = q.CacheCalibrationReader(images, SIZE, batch_size=16)
    batches = list(iter(reader.get_next, None))
    # equal batches only: onnxruntime's percentile/entropy calibrators fail on a ragged tail
    assert [b["image"].shape[0] for b in batches] == [16, 16] and len(reader) == 2
    np.testing.assert_array_equal(batches[0]["image"], normalise_batch(images[:16], SIZE))
    assert reader.get_next() is None
    reader.rewind()
    assert reader.get_next()["image"].shape == (16, 3, SIZE, SIZE)
    few = q.CacheCalibrationReader(images[:5], SIZE, batch_size=16)
    assert [b["image"].shape[0] for b in iter(few.get_next, None)] == [5]
    with pytest.raises(q.QuantizationError):
        q.CacheCalibrationReader(images[:0], SIZE)


def test_weight_type_avoids_u8s8_saturation_without_vnni() -> None:
    """x86 without VNNI saturates U8S8 sums: uint8 weights there, int8 with VNNI and on ARM."""
    from onnxruntime.quantization import QuantType
    assert q.default_weight_type("x86_64", {"avx2", "fma"}) == QuantType.QUInt8
    assert q.default_weight_type("x86_64", {"avx2", "avx512_vnni"}) == QuantType.QInt8
    assert q.default_weight_type("x86_64", {"avx2", "avx_vnni"}) == QuantType.QInt8
    assert q.default_weight_type("aarch64", set()) == QuantType.QInt8


def test_percentile_calibration_runs_with_a_ragged_image_count(exported, tmp_path) -> None:
    ws, model_id = exported
    path = cx.export_dir(ws, model_id) / "model.onnx"
    out = q.quantize_onnx(path, tmp_path / "pct.onnx", cx.pool_images(ws, 21)[1], SIZE,
                          calibrate_method="percentile")
    assert json.loads(ex.read_metadata(out)["cargroup.quantization"])["calibration_images"] == 16


def test_int8_model_is_quantized_and_keeps_metadata(exported, quantized) -> None:
    ws, model_id = exported
    path, _ = quantized
    assert path == cx.export_dir(ws, model_id) / "model.int8.onnx"
    proto = onnx.load(str(path))
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["QuantizeLinear"] > 10 and ops["DequantizeLinear"] > 10
    meta = {p.key: p.value for p in proto.metadata_props}
    fp32_meta = ex.read_metadata(cx.export_dir(ws, model_id) / "model.onnx")
    assert meta[ex.META_SCHEMA] == fp32_meta[ex.META_SCHEMA]
    assert meta[ex.META_PREPROCESS] == fp32_meta[ex.META_PREPROCESS]
    assert meta[ex.META_PRECISION] == "int8" and ex.META_PARITY not in meta
    assert meta[ex.META_BACKBONE] == fp32_meta[ex.META_BACKBONE]
    assert meta[ex.META_WEIGHTS_ORIGIN] == fp32_meta[ex.META_WEIGHTS_ORIGIN]
    info = json.loads(meta["cargroup.quantization"])
    assert info["format"] == "QDQ" and info["per_channel"] and info["calibration_images"] == 48
    assert info["weights"] == ("int8" if q.default_weight_type() == QuantType.QInt8 else "uint8")
    assert cx.find_export(ws, model_id) == path
    assert cx.find_export(ws, model_id, prefer_int8=False).name == "model.onnx"


def test_int8_predictions_mostly_agree_with_fp32(exported, quantized) -> None:
    ws, model_id = exported
    path, report = quantized
    # the trained head passes the product's gate (90 %), on both backbones
    assert report.agreement["color"] >= q.DEFAULT_MIN_AGREEMENT
    assert 0.0 <= report.max_abs_prob_diff["color"] <= 0.5   # a few near-tie images move most
    assert report.n_labelled["color"] == report.n_eval_images == 60
    assert report.accuracy_fp32["color"] >= 0.6
    assert abs(report.delta["color"]) <= 0.1
    assert report.n_labelled["type"] == 0 and report.accuracy_int8["type"] is None
    saved = cx.load_int8_report(ws, model_id)
    assert saved["agreement"] == report.agreement and saved["passed"]
    assert "| color | 60 |" in report.table()
    # the int8 file is usable through the same runtime class as fp32
    _, images = cx.pool_images(ws, 20, seed=3)
    p8, emb8 = OnnxClassifier(path).predict(images)
    p32, emb32 = OnnxClassifier(cx.export_dir(ws, model_id) / "model.onnx").predict(images)
    assert emb8.shape == emb32.shape and emb8.shape[0] == 20
    assert np.mean(p8["color"].argmax(1) == p32["color"].argmax(1)) >= 0.85
    np.testing.assert_allclose(p8["color"].sum(1), 1.0, atol=1e-5)


def test_failed_thresholds_refuse_int8(exported, quantized) -> None:
    ws, model_id = exported
    published = cx.export_dir(ws, model_id) / "model.int8.onnx"
    before = published.read_bytes()
    with pytest.raises(q.QuantizationError, match="agreement"):
        cx.quantize_export(ws, calibration=16, min_agreement=1.01)
    assert published.read_bytes() == before
    assert (published.parent / "model.int8.onnx.rejected").is_file()
    assert not cx.load_int8_report(ws, model_id)["passed"]


def test_accuracy_drop_gate_needs_enough_labels(exported, tmp_path) -> None:
    """compare_models flags a drop only where the head has enough labelled images."""
    ws, model_id = exported
    path = cx.export_dir(ws, model_id) / "model.onnx"
    int8 = q.quantize_onnx(path, tmp_path / "int8.onnx", cx.pool_images(ws, 8)[1], SIZE)
    _, images = cx.pool_images(ws, 30)
    fp32_pred = OnnxClassifier(path).predict(images)[0]["color"].argmax(1)
    wrong = (fp32_pred + 1) % 5   # fp32 is 0% right, so int8 cannot drop: no failure
    report = q.compare_models(path, int8, images, {"color": wrong}, min_agreement=0.0,
                              min_labels_for_drop_gate=1)
    assert report.accuracy_fp32["color"] == 0.0 and report.passed
    report = q.compare_models(path, int8, images, {"color": fp32_pred}, min_agreement=0.0,
                              max_drop=-1.0, min_labels_for_drop_gate=1)
    assert not report.passed and "points below fp32" in report.failures[0]
    report = q.compare_models(path, int8, images, {"color": fp32_pred}, min_agreement=0.0,
                              max_drop=-1.0, min_labels_for_drop_gate=1000)
    assert report.passed  # too few labels to judge a drop


def test_quantize_needs_published_export(tmp_path) -> None:
    ws, _ = make_trained_workspace(tmp_path / "ws", n=9, steps=1)
    with pytest.raises(q.QuantizationError, match="no published fp32 export"):
        cx.quantize_export(ws)
