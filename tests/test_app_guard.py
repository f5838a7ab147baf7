"""The model guardrails on the pages (AppTest): Train (provenance, small sets, a refused model,
"Make it current anyway", "Make #N current"), Evaluate (majority baseline, percent), Queue
(near-uniform scores). A "worse" model is registered through the store with fake metrics, beside
the real model's checkpoint, as the promotion gate would have recorded it."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app_fixtures import build_trained
from core.acquisition import score_name
from core.dashboard import evaluation_report
from core.promotion import decide_promotion
from data.accounts import audit_entries
from data.workspace import Workspace
from test_app_pages import assert_clean, run_page


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_trained(tmp_path_factory.mktemp("appguard") / "ws").root


@pytest.fixture
def ws(template: Path, tmp_path: Path) -> Workspace:
    shutil.copytree(template, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def add_refused(ws: Workspace) -> int:
    """A second model the gate refused: worse on the evaluation set, recorded, not current."""
    with ws.store() as store:
        cur = store.current_model()
        d = decide_promotion({"color": 0.0, "type": 0.2, "orientation": 0.1},
                             {"color": 0.5, "type": 0.3, "orientation": 0.2}, current_id=cur["id"])
        metrics = {"val": {"epoch": 2, "loss": 1.234, "n": 5},
                   "train": {"n": 40, "epochs_run": 3},
                   "test": {"accuracy": {"color": 0.0, "type": 0.2, "orientation": 0.1}},
                   "promotion": d.to_dict()}
        return store.add_model(cur["path"], parent_id=cur["id"], metrics=metrics,
                               make_current=False, backbone=cur["backbone"],
                               weights_origin=cur["weights_origin"])


def texts(at) -> str:
    return " ".join(e.value for kind in ("markdown", "caption", "warning", "success", "info")
                    for e in getattr(at, kind))


def test_train_page_says_where_the_weights_came_from_and_warns_of_small_sets(
        ws: Workspace, monkeypatch) -> None:
    at = run_page(ws, monkeypatch, "4_Train.py")
    assert_clean(at)
    shown = texts(at)
    assert "Current model #1" in shown and "weights from **random init**" in shown
    assert "kept **epoch 1 of 1" in shown
    assert "Promotion: first model" in shown
    warning = next(w.value for w in at.warning if "Too few images to decide" in w.value)
    assert "validation set, color" in warning and "fewer than 30" in warning
    assert "evaluation set" in warning
    assert not [b for b in at.button if b.label.startswith("Make #")]  # one model: nothing to pick


def test_a_refused_model_is_explained_and_can_be_made_current_anyway(
        ws: Workspace, monkeypatch) -> None:
    new = add_refused(ws)
    at = run_page(ws, monkeypatch, "4_Train.py")
    assert_clean(at)
    banner = next(w.value for w in at.warning if "was not made current" in w.value)
    assert f"Model #{new} was not made current" in banner and "worse than the current model" in banner
    assert "color 50.0% → 0.0%" in banner
    at.button(key="force_current").click().run()
    assert_clean(at)
    with ws.store() as store:
        assert store.current_model()["id"] == new
        entry = audit_entries(store)[0]
    assert entry["action"] == "promote" and entry["details"]["note"] == "overrode the promotion gate"
    assert any(f"Model #{new} is now current." in s.value for s in at.success)
    assert not any("was not made current" in w.value for w in at.warning)


def test_one_click_makes_an_earlier_model_current_again(ws: Workspace, monkeypatch) -> None:
    new = add_refused(ws)
    with ws.store() as store:
        store.set_current_model(new)
    at = run_page(ws, monkeypatch, "4_Train.py")
    assert_clean(at)
    labels = [b.label for b in at.button]
    assert "Make #1 current" in labels and f"Make #{new} current" not in labels
    at.button(key="make_current_1").click().run()
    assert_clean(at)
    with ws.store() as store:
        assert store.current_model()["id"] == 1


def test_evaluate_page_shows_the_majority_baseline_and_percent(ws: Workspace, monkeypatch) -> None:
    add_refused(ws)  # a second model (same report file) so the comparison shows
    at = run_page(ws, monkeypatch, "5_Evaluate.py")
    assert_clean(at)
    bases = [m for m in at.metric if m.label == "Majority baseline"]
    assert len(bases) == 3 and all(m.value.endswith("%") for m in bases)
    f1 = [m for m in at.metric if m.label == "Macro F1"]
    assert f1 and all(m.value.endswith("%") for m in f1)
    accuracy = [m for m in at.metric if m.label == "Accuracy"]
    assert all("points vs baseline" in str(m.delta) for m in accuracy)
    compare = at.dataframe[-1].value
    assert "Δ accuracy (points)" in compare.columns and "majority baseline (%)" in compare.columns
    with ws.store() as store:
        report = evaluation_report(ws, store.models()[0])
    expected = [round(100 * h["accuracy"], 1) for h in report["heads"].values()]
    assert compare["accuracy #1 (%)"].tolist() == expected        # percent, not a fraction
    assert compare["Δ accuracy (points)"].tolist() == [0.0] * 3   # same report file


def _set_entropy(ws: Workspace, value_of) -> int:
    with ws.store() as store:
        rnd = store.latest_round()
        model_id = int(rnd["model_id"])
        ids = [i for i in store.scores(model_id, score_name("entropy", "color"))]
        store.save_scores(model_id, [(i, score_name("entropy", a), value_of(k))
                                     for k, i in enumerate(ids) for a in ws.schema.attributes])
    return model_id


def test_queue_warns_when_scores_are_near_uniform(ws: Workspace, monkeypatch) -> None:
    model_id = _set_entropy(ws, lambda k: 0.99)
    at = run_page(ws, monkeypatch, "6_Queue.py")
    assert_clean(at)
    warning = next(w.value for w in at.warning if "near-uniform" in w.value)
    assert f"Model #{model_id}" in warning and "cold-start" in warning and "typiclust" in warning


def test_queue_does_not_warn_when_the_model_can_rank(ws: Workspace, monkeypatch) -> None:
    _set_entropy(ws, lambda k: (k % 10) / 10)
    at = run_page(ws, monkeypatch, "6_Queue.py")
    assert_clean(at)
    assert not any("near-uniform" in w.value for w in at.warning)
