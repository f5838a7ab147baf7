"""Per-head metrics with class names, saved per model; batched prediction from uint8 arrays."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from core.cli import main as cli_main
from data.errors import UserError
from data.schema import DEFAULT_SCHEMA
from data.workspace import Workspace, WorkspaceConfig
from data.cache import ImageCache
from models.checkpoint import model_meta, save_checkpoint
from core.training import evaluate_and_record as evaluate
from models.evaluate import head_report, majority_baseline, predict_arrays
from models.network import MultiHeadResNet


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_head_report_by_hand() -> None:
    names = ["red", "green", "blue", "pink"]
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0])
    r = head_report(y_true, y_pred, names)
    assert r["n"] == 5 and r["accuracy"] == pytest.approx(3 / 5)
    assert r["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert r["per_class"]["red"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert r["per_class"]["green"]["precision"] == pytest.approx(2 / 3)
    assert r["per_class"]["green"]["recall"] == 1.0
    assert r["per_class"]["blue"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["per_class"]["pink"]["support"] == 0
    # macro over the classes that occur (pink never does)
    assert r["macro_over"] == ["red", "green", "blue"]
    assert r["macro_recall"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert r["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_majority_baseline_matches_sklearn_dummy_classifier() -> None:
    from sklearn.dummy import DummyClassifier
    from sklearn.metrics import accuracy_score
    names = ["red", "green", "blue"]
    y = np.array([1, 1, 1, 0, 2, 1, 0])
    base = majority_baseline(y, names)
    dummy = DummyClassifier(strategy="most_frequent").fit(np.zeros((len(y), 1)), y)
    assert base["class"] == names[int(dummy.predict([[0]])[0])] == "green"
    assert base["accuracy"] == pytest.approx(accuracy_score(y, dummy.predict(np.zeros((7, 1)))))
    assert base["macro_f1"] == pytest.approx((0 + 2 * 4 / 7 / (1 + 4 / 7) + 0) / 3)
    assert head_report(y, y, names)["baseline"] == base


def test_head_report_without_labels() -> None:
    r = head_report(np.array([], int), np.array([], int), ["a", "b"])
    assert r["n"] == 0 and r["accuracy"] is None


def test_predict_arrays_shapes_and_probabilities() -> None:
    model = MultiHeadResNet(DEFAULT_SCHEMA)
    model.train()
    images = np.random.default_rng(0).integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)
    preds = predict_arrays(model, images, 32, batch_size=2)
    assert not model.training  # dropout off
    assert preds.embeddings.shape == (5, 512)
    assert {a: p.shape for a, p in preds.probs.items()} == {
        "color": (5, 10), "type": (5, 8), "orientation": (5, 8)}
    for p in preds.probs.values():
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    again = predict_arrays(model, images, 32, batch_size=5)
    np.testing.assert_allclose(again.probs["color"], preds.probs["color"], atol=1e-5)
    empty = predict_arrays(model, images[:0], 32)
    assert empty.embeddings.shape == (0, 512) and empty.probs["type"].shape == (0, 8)


def _workspace_with_model(tmp_path: Path) -> tuple[Workspace, int]:
    ws = Workspace(tmp_path / "ws").init(WorkspaceConfig(cache_size=32))
    rng = np.random.default_rng(1)
    cache = ImageCache(ws.cache_dir, 32)
    labels = [{"color": "red", "type": "suv", "orientation": "left"},
              {"color": "blue"}, {"color": "gray", "orientation": "front"},
              {"type": "bus"}, None]  # last: unlabelled, must not count
    with ws.store() as store:
        for k, values in enumerate(labels):
            img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            row = cache.append(img)[0]
            image_id, _ = store.add_image(path=f"t{k}.png", name=f"t{k}.png",
                                          sha256=hashlib.sha256(img.tobytes()).hexdigest(),
                                          width=32, height=32, nbytes=0, split="test",
                                          cache_row=row)
            if values:
                store.add_label(image_id, values, source="import")
        path = ws.models_dir / "m1" / "model.pt"
        save_checkpoint(path, MultiHeadResNet(ws.schema), model_meta(ws.schema, 32))
        model_id = store.add_model(str(path.relative_to(ws.root)),
                                   metrics={"val": {"loss": 1.0}})
    return ws, model_id


def test_evaluate_saves_json_with_class_names_and_store_summary(tmp_path: Path) -> None:
    ws, model_id = _workspace_with_model(tmp_path)
    report = evaluate(ws).to_dict()
    assert report["model_id"] == model_id and report["n_images"] == 4
    assert {a: h["n"] for a, h in report["heads"].items()} == {
        "color": 3, "type": 2, "orientation": 2}
    saved = json.loads((ws.models_dir / "m1" / "metrics_test.json").read_text())
    assert saved["heads"]["color"]["classes"][:3] == ["red", "green", "yellow"]
    assert set(saved["heads"]["type"]["per_class"]) == set(DEFAULT_SCHEMA.classes["type"])
    assert len(saved["heads"]["orientation"]["confusion_matrix"]) == 8
    with ws.store() as store:
        metrics = store.current_model()["metrics"]
    assert metrics["val"] == {"loss": 1.0}  # training metrics kept
    assert metrics["test"]["n"] == {"color": 3, "type": 2, "orientation": 2}
    assert set(metrics["test"]["accuracy"]) == {"color", "type", "orientation"}


def test_evaluate_errors(tmp_path: Path) -> None:
    ws, _ = _workspace_with_model(tmp_path)
    with pytest.raises(UserError, match="no labelled val images"):
        evaluate(ws, split="val")
    with pytest.raises(UserError, match="no model with id"):
        evaluate(ws, model_id=42)


def test_cli_evaluate_prints_per_head_lines(tmp_path: Path, capsys) -> None:
    ws, _ = _workspace_with_model(tmp_path)
    assert cli_main(["--workspace", str(ws.root), "evaluate"]) == 0
    out = capsys.readouterr().out
    assert "color" in out and "(n=3)" in out and "orientation" in out
