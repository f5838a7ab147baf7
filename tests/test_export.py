"""ONNX export: parity gate (passes on a trained model, refuses a tampered file), metadata
round trip, OnnxClassifier predictions, find_export and the CLI; each on both backbones."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import core.export_files as export_files_mod
from core.cli import main
from data.errors import UserError
from data.workspace import Workspace, WorkspaceConfig
from data.preprocess import normalise_batch
from models import export as ex
from core import exports as cx
from core.registry import load_model
from data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from models.onnx_runtime import OnnxClassifier, softmax
from tests.conftest import require_shared_real
from tests.export_helpers import BACKBONES, SIZE, make_trained_workspace


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=BACKBONES)
def trained(request, tmp_path_factory) -> tuple[Workspace, int]:
    torch.set_num_threads(1)
    return make_trained_workspace(tmp_path_factory.mktemp("export") / "ws",
                                  backbone=request.param)


@pytest.fixture(scope="module")
def exported(trained) -> Path:
    ws, _ = trained
    return cx.export_onnx(ws, parity_images=48)


def _tamper(src: Path, dst: Path) -> None:
    """Scale the largest initializer (a conv weight) by 1.5: a wrong but well-formed model."""
    proto = onnx.load(str(src))
    init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(init) * np.float32(1.5)
    init.CopyFrom(numpy_helper.from_array(arr.astype(np.float32), init.name))
    onnx.save(proto, str(dst))


def test_export_is_published_with_parity_report(trained, exported) -> None:
    ws, model_id = trained
    assert exported == ws.exports_dir / f"model_{model_id}" / "model.onnx"
    parity = cx.load_parity(ws, model_id)
    assert parity["passed"] and parity["n_images"] == 48
    for head, diff in parity["max_abs_diff"].items():
        assert diff <= 1e-3 * parity["logit_scale"][head]
        assert parity["argmax_agreement"][head] >= 0.99
    assert not list(exported.parent.glob(".staging-*"))


def test_metadata_round_trips(trained, exported) -> None:
    ws, model_id = trained
    meta = ex.read_metadata(exported)
    schema = json.loads(meta[ex.META_SCHEMA])
    assert schema == {a: list(ws.schema.classes[a]) for a in ws.schema.attributes}
    pre = json.loads(meta[ex.META_PREPROCESS])
    assert pre["size"] == SIZE and pre["channel_order"] == "RGB" and pre["layout"] == "NCHW"
    assert pre["resize"] == "square" and pre["scale"] == pytest.approx(1 / 255)
    assert pre["mean"] == pytest.approx(IMAGENET_MEAN) and pre["std"] == pytest.approx(IMAGENET_STD)
    assert meta[ex.META_MODEL_ID] == str(model_id)
    assert json.loads(meta[ex.META_OUTPUTS]) == [*ws.schema.attributes, "embedding"]
    assert json.loads(meta[ex.META_PARITY])["n_images"] == 48
    clf = OnnxClassifier(exported)
    assert clf.schema == schema and clf.image_size == SIZE


def test_metadata_records_backbone_and_weights_origin(trained, exported) -> None:
    ws, model_id = trained
    meta = ex.read_metadata(exported)
    with ws.store() as store:
        row = next(m for m in store.models() if m["id"] == model_id)
    assert meta[ex.META_BACKBONE] == row["backbone"]
    origin = json.loads(meta[ex.META_WEIGHTS_ORIGIN])
    assert origin == row["weights_origin"] and origin["backbone"] == row["backbone"]
    expected_kind = "imagenet-package" if row["backbone"] == "efficientnet_lite0" else "random"
    assert origin["kind"] == expected_kind


def test_graph_has_named_outputs_and_dynamic_batch(trained, exported) -> None:
    ws, _ = trained
    graph = onnx.load(str(exported), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["image"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]
    assert [o.name for o in graph.output] == [*ws.schema.attributes, "embedding"]


def test_onnx_classifier_matches_pytorch_at_any_batch_size(trained, exported) -> None:
    ws, _ = trained
    model, _ = load_model(ws)
    _, images = cx.pool_images(ws, 23, seed=5)
    clf = OnnxClassifier(exported, threads=1)
    probs, emb = clf.predict(images, batch_size=10)  # batches of 10, 10, 3
    with torch.no_grad():
        logits, t_emb = model.forward_with_embedding(torch.from_numpy(normalise_batch(images, SIZE)))
    assert emb.shape == (23, model.feature_dim) and clf.embedding_dim == model.feature_dim
    np.testing.assert_allclose(emb, t_emb.numpy(), atol=1e-3, rtol=1e-4)
    for a in ws.schema.attributes:
        assert probs[a].shape == (23, ws.schema.num_classes(a))
        np.testing.assert_allclose(probs[a], softmax(logits[a].numpy()), atol=1e-4)
    single, _ = clf.predict(images[0])  # one HxWx3 image
    assert single["color"].shape == (1, ws.schema.num_classes("color"))
    first = clf.labels(probs)[0]
    assert first["color"][0] in ws.schema.classes["color"] and 0 < first["color"][1] <= 1


def test_tampered_onnx_fails_parity(trained, exported, tmp_path) -> None:
    ws, _ = trained
    model, _ = load_model(ws)
    _, images = cx.pool_images(ws, 32)
    bad = tmp_path / "tampered.onnx"
    _tamper(exported, bad)
    report = ex.check_parity(model, bad, images, SIZE)
    assert not report.passed
    assert any("max abs logit diff" in f for f in report.failures)
    assert ex.check_parity(model, exported, images, SIZE).passed


def test_failing_export_is_refused_and_keeps_published_file(trained, exported, monkeypatch) -> None:
    ws, model_id = trained
    before = exported.read_bytes()
    real = ex.torch_to_onnx

    def tampering_export(model, path, image_size):
        real(model, path, image_size)
        _tamper(Path(path), Path(path))
        return Path(path)

    monkeypatch.setattr(ex, "torch_to_onnx", tampering_export)
    with pytest.raises(ex.ParityError, match="parity failed") as err:
        cx.export_onnx(ws, model_id, parity_images=16)
    assert not err.value.report.passed
    assert exported.read_bytes() == before                      # published file untouched
    assert (exported.parent / "model.onnx.rejected").is_file()  # candidate kept for inspection
    assert cx.find_export(ws, model_id, prefer_int8=False) == exported
    assert not list(exported.parent.glob(".staging-*"))
    monkeypatch.undo()
    cx.export_onnx(ws, model_id, parity_images=16)  # restore parity.json for other tests


def test_refuses_without_pool_images(trained, tmp_path) -> None:
    ws, _ = trained
    model, _ = load_model(ws)
    with pytest.raises(ex.ExportError, match="at least one pool image"):
        ex.publish_onnx(model, tmp_path / "out", np.zeros((0, SIZE, SIZE, 3), np.uint8), SIZE)
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_model_resolution_errors(tmp_path, trained) -> None:
    empty = Workspace(tmp_path / "empty").init(WorkspaceConfig(cache_size=SIZE))
    with pytest.raises(UserError, match="no current model"):
        cx.export_onnx(empty)
    ws, _ = trained
    with pytest.raises(UserError, match="no model with id 999"):
        cx.export_onnx(ws, 999)


def test_find_export_prefers_int8_and_ignores_rejects(tmp_path) -> None:
    ws = Workspace(tmp_path / "ws")
    folder = cx.export_dir(ws, 7)
    assert cx.find_export(ws, 7) is None
    folder.mkdir(parents=True)
    (folder / "model.onnx.rejected").write_bytes(b"x")
    (folder / "model.int8.onnx.rejected").write_bytes(b"x")
    assert cx.find_export(ws, 7) is None
    (folder / "model.onnx").write_bytes(b"x")
    assert cx.find_export(ws, 7) == folder / "model.onnx"
    (folder / "model.int8.onnx").write_bytes(b"x")
    assert cx.find_export(ws, 7) == folder / "model.int8.onnx"
    assert cx.find_export(ws, 7, prefer_int8=False) == folder / "model.onnx"


def _latency(ws, model_id, rows) -> None:
    path = export_files_mod.results_path(ws, model_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": [
        {"backend": name, "batch": batch, "ms per image": ms} for name, batch, ms in rows]}))


def test_find_export_skips_an_int8_file_measured_slower_than_fp32_here(tmp_path) -> None:
    """Lite0's int8 ran 4-7x slower than fp32 on a CPU without VNNI: scoring then uses fp32.
    The largest batch both were timed at decides; without a measurement int8 stays first."""
    ws = Workspace(tmp_path / "ws")
    folder = cx.export_dir(ws, 3)
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"x")
    (folder / "model.int8.onnx").write_bytes(b"x")
    assert not cx.int8_slower(ws, 3)
    assert cx.find_export(ws, 3) == folder / "model.int8.onnx"
    _latency(ws, 3, [("PyTorch eager", 16, 9.0), ("ONNX Runtime fp32", 1, 2.7),
                     ("ONNX Runtime int8", 1, 18.4), ("ONNX Runtime fp32", 16, 1.1),
                     ("ONNX Runtime int8", 16, 6.0)])
    assert cx.int8_slower(ws, 3)
    assert cx.find_export(ws, 3) == folder / "model.onnx"
    # faster at the largest batch (what pool scoring runs) wins, even if slower at batch 1
    _latency(ws, 3, [("ONNX Runtime fp32", 1, 2.0), ("ONNX Runtime int8", 1, 3.0),
                     ("ONNX Runtime fp32", 16, 1.2), ("ONNX Runtime int8", 16, 0.8)])
    assert cx.find_export(ws, 3) == folder / "model.int8.onnx"
    # a table without int8 (not built when timed) or unreadable rows: int8 stays first
    _latency(ws, 3, [("ONNX Runtime fp32", 16, 1.2), ("ONNX Runtime int8", "x", None)])
    assert cx.find_export(ws, 3) == folder / "model.int8.onnx"


def test_cli_export_with_jetson_bundle(trained, exported, capsys) -> None:
    ws, model_id = trained
    code = main(["--workspace", str(ws.root), "export", "--jetson", "--parity-images", "16",
                 "--int8", "--calibration", "16", "--min-agreement", "0.5"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "ONNX published at" in out and "argmax agreement" in out
    assert "int8 ONNX published at" in out and "| color | 60 |" in out
    assert (ws.exports_dir / f"model_{model_id}" / f"cargroup_jetson_model_{model_id}.zip").is_file()


def test_cli_export_out_holds_every_artifact(trained, exported, tmp_path, capsys) -> None:
    """``--out DIR`` gets everything the run made, not only the Jetson zip (issue 11, defect 10)."""
    ws, model_id = trained
    out_dir = tmp_path / "delivery"
    code = main(["--workspace", str(ws.root), "export", "--jetson", "--parity-images", "16",
                 "--int8", "--calibration", "16", "--min-agreement", "0.5",
                 "--out", str(out_dir)])
    text = capsys.readouterr().out
    assert code == 0, text
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == sorted(["model.onnx", "parity.json", "model.int8.onnx", "int8_report.json",
                            f"cargroup_jetson_model_{model_id}.zip"])
    published = ws.exports_dir / f"model_{model_id}"
    for name in ("model.onnx", "model.int8.onnx"):   # copies, byte for byte
        assert (out_dir / name).read_bytes() == (published / name).read_bytes()
    assert f"written to {out_dir}" in text


def test_cli_export_out_without_options_holds_the_onnx(trained, exported, tmp_path, capsys) -> None:
    ws, _ = trained
    out_dir = tmp_path / "plain"
    assert main(["--workspace", str(ws.root), "export", "--parity-images", "16",
                 "--out", str(out_dir)]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.onnx", "parity.json"]


def test_cli_unknown_model_is_one_line_error(trained, capsys) -> None:
    ws, _ = trained
    assert main(["--workspace", str(ws.root), "export", "--model", "424242"]) == 2
    assert "no model with id 424242" in capsys.readouterr().err


def test_parity_on_real_images(trained, exported) -> None:
    """Real photographs (not the synthetic pool) through both runtimes."""
    import cv2

    real = require_shared_real()
    files = sorted((real / "color" / "images").glob("*.jpg"))[:32]
    if not files:
        pytest.skip("no images in shared color set")
    images = np.stack([cv2.resize(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB), (SIZE, SIZE),
                                  interpolation=cv2.INTER_AREA) for f in files])
    ws, _ = trained
    model, _ = load_model(ws)
    report = ex.check_parity(model, exported, images, SIZE)
    assert report.passed, report.failures
