"""Model guardrails: the promotion gate, make-current/rollback, provenance, small sets, the
majority baseline from the training labels, and the near-uniform score check."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import core.training as training
from app_fixtures import build_trained
from core.evaluation_view import comparison_rows, majority_baselines, report_baselines
from core.guardrails import (MIN_LABELLED_PER_HEAD, model_provenance, refused_model,
                             small_sets)
from core.promotion import (PROMOTION_TOLERANCE, PromotionDecision, decide_promotion, promote,
                            rollback)
from core.score_spread import round_score_spread, score_spread
from core.selection import AUTO_UNIFORM_ENTROPY
from data.accounts import audit_entries
from data.workspace import Workspace
from models.train import TrainConfig

TINY = TrainConfig(epochs=1, batch_size=16, image_size=32, pretrained=False, num_threads=1)


# -- the gate as a pure function ------------------------------------------------------------------
def test_first_model_is_always_promoted() -> None:
    d = decide_promotion({"color": 0.1}, None, current_id=None)
    assert d.promote and "first model" in d.reason and not d.compared


def test_worse_model_is_refused_with_the_figures_in_the_reason() -> None:
    d = decide_promotion({"color": 0.0, "type": 0.6}, {"color": 0.5, "type": 0.6}, current_id=4)
    assert not d.promote and d.compared and not d.forced
    assert d.current_accuracy == pytest.approx(0.55) and d.new_accuracy == pytest.approx(0.30)
    assert "NOT made current" in d.reason and "#4" in d.reason and "color 50.0% → 0.0%" in d.reason


def test_a_drop_within_the_tolerance_is_not_worse() -> None:
    d = decide_promotion({"color": 0.50 - PROMOTION_TOLERANCE / 2}, {"color": 0.50}, current_id=1)
    assert d.promote and "not worse" in d.reason
    d = decide_promotion({"color": 0.50 - PROMOTION_TOLERANCE * 1.5}, {"color": 0.50},
                         current_id=1)
    assert not d.promote


def test_confirmed_promotion_of_a_worse_model() -> None:
    d = decide_promotion({"color": 0.1}, {"color": 0.9}, current_id=2, force=True)
    assert d.promote and d.forced and "user's confirmation" in d.reason


def test_only_heads_both_models_were_measured_on_are_compared() -> None:
    d = decide_promotion({"color": 0.9, "type": None}, {"color": 0.8, "type": 0.99},
                         current_id=1)
    assert d.promote and set(d.per_head) == {"color"}


def test_no_comparison_possible_promotes_and_says_why() -> None:
    assert "not evaluated" in decide_promotion(None, {"color": 0.9}, current_id=1).reason
    d = decide_promotion({"color": 0.2}, None, current_id=1)
    assert d.promote and "could not be measured" in d.reason


def test_decision_round_trips_through_the_store_json() -> None:
    d = decide_promotion({"color": 0.1}, {"color": 0.9}, current_id=2)
    assert PromotionDecision.from_dict(d.to_dict()) == d
    assert PromotionDecision.from_dict({}) is None


# -- the gate inside training -------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_trained(tmp_path_factory.mktemp("guard") / "ws").root


@pytest.fixture
def ws(trained_template: Path, tmp_path: Path) -> Workspace:
    shutil.copytree(trained_template, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def test_the_first_trained_model_records_why_it_was_promoted(ws: Workspace) -> None:
    with ws.store() as store:
        [model] = store.models()
    p = model_provenance(model)
    assert p.is_current and p.promotion is not None and p.promotion.promote
    assert "first model" in p.promotion.reason
    assert p.kept_epoch == 1 and p.epochs_run == 1 and p.kept_text().startswith("epoch 1 of 1")
    assert p.origin_kind == "random" and p.origin == "random init" and p.random_init


def _perfect_current(monkeypatch) -> None:
    """The current model measured perfect on the evaluation images: any new model is worse."""
    def perfect(ws, evaluation, data, split):
        with ws.store() as store:
            current = store.current_model()
        return int(current["id"]), {a: 1.0 for a in evaluation.heads}
    monkeypatch.setattr(training, "current_accuracy_on", perfect)


def test_a_worse_model_is_recorded_but_not_made_current(ws: Workspace, monkeypatch) -> None:
    _perfect_current(monkeypatch)
    outcome = training.train_and_promote(ws, TINY)
    assert outcome.refused and not outcome.promoted and outcome.model_id == 2
    assert "NOT made current" in outcome.decision.reason
    with ws.store() as store:
        models = store.models()
        assert store.current_model()["id"] == 1
    assert models[1]["status"] == "ready" and not models[1]["is_current"]
    assert models[1]["metrics"]["promotion"]["promote"] is False
    refused = refused_model(models)
    assert refused is not None and refused.model_id == 2
    # "Make it current anyway": the maintainer's promotion, audited
    assert promote(ws, 2, note="overrode the promotion gate") == 1
    with ws.store() as store:
        assert store.current_model()["id"] == 2
        entry = audit_entries(store)[0]
        assert refused_model(store.models()) is None
    assert entry["action"] == "promote" and entry["details"]["note"] == "overrode the promotion gate"


def test_force_promote_makes_a_worse_model_current_and_any_earlier_one_can_come_back(
        ws: Workspace, monkeypatch) -> None:
    _perfect_current(monkeypatch)
    outcome = training.train_and_promote(ws, TINY, force_promote=True)
    assert outcome.promoted and outcome.decision.forced
    with ws.store() as store:
        assert store.current_model()["id"] == outcome.model_id
    assert promote(ws, 1) == outcome.model_id          # make model #1 current again
    assert rollback(ws) == outcome.model_id           # and back: the last change undone
    with ws.store() as store:
        assert store.current_model()["id"] == outcome.model_id


def test_a_refused_train_job_succeeds_says_why_and_queues_nothing(ws: Workspace,
                                                                  monkeypatch) -> None:
    from core.jobs import get_job, run_job, start_job
    monkeypatch.setenv("CARGROUP_JOB_THREADS", "1")
    _perfect_current(monkeypatch)
    with ws.store() as store:
        rounds = len(store.rounds())
    job_id = start_job(ws, "train", {"epochs": 1, "image_size": 32, "batch_size": 16,
                                     "pretrained": False, "then_queue": 3}, spawn=False)
    assert run_job(ws, job_id) == "succeeded"
    job = get_job(ws, job_id)
    assert job["result"]["promoted"] is False and not job["result"]["promotion"]["promote"]
    assert "NOT made current" in job["message"] and "no batch queued" in job["message"]
    assert not any(e.get("promoted") for e in job["log"])
    with ws.store() as store:
        assert store.current_model()["id"] == 1 and len(store.rounds()) == rounds


def test_the_current_model_is_remeasured_on_the_same_images(ws: Workspace) -> None:
    data, members = training.load_eval_data(ws, "test")
    with ws.store() as store:
        current = store.current_model()
    report = training.evaluate_and_record(ws, int(current["id"]), save=False)
    cid, acc = training.current_accuracy_on(ws, report, data, "test")
    assert cid == current["id"]
    assert acc == {a: h["accuracy"] for a, h in report.heads.items()}


# -- small sets ---------------------------------------------------------------------------------
def test_small_val_and_evaluation_sets_are_named_with_the_threshold(ws: Workspace) -> None:
    with ws.store() as store:
        found = small_sets(store, ws.schema)
        val = store.current_labels(split="val")
    assert {s.which for s in found} == {"validation", "evaluation"}
    v = next(s for s in found if s.which == "validation" and s.attribute == "color")
    assert v.labelled == sum(1 for x in val.values() if "color" in x) < MIN_LABELLED_PER_HEAD
    assert f"fewer than {MIN_LABELLED_PER_HEAD}" in v.sentence() and "by chance" in v.sentence()
    with ws.store() as store:
        assert small_sets(store, ws.schema, minimum=0) == []


# -- majority baseline ----------------------------------------------------------------------------
def _report(cm: list[list[int]], classes: list[str]) -> dict:
    n = sum(map(sum, cm))
    return {"heads": {"color": {"n": n, "classes": classes, "confusion_matrix": cm,
                                "accuracy": sum(cm[i][i] for i in range(len(cm))) / n,
                                "macro_f1": 0.5}}}


def test_baseline_is_the_training_majority_measured_on_the_evaluated_images() -> None:
    # training labels say "red"; the evaluated images are mostly blue: the baseline is 2 of 10
    report = _report([[2, 0], [1, 7]], ["red", "blue"])
    [b] = majority_baselines({"color": {"red": 30, "blue": 10}}, report).values()
    assert b.majority_class == "red" and b.train_share == 0.75
    assert b.accuracy == pytest.approx(0.2) and b.n == 10


def test_baseline_without_training_labels_is_none() -> None:
    [b] = majority_baselines({"color": {"red": 0, "blue": 0}},
                             _report([[1, 0], [0, 1]], ["red", "blue"])).values()
    assert b.majority_class is None and b.accuracy is None


def test_baseline_from_the_store_matches_the_training_labels(ws: Workspace) -> None:
    with ws.store() as store:
        [model] = store.models()
        train = store.current_labels(split="train")
    from core.dashboard import evaluation_report
    report = evaluation_report(ws, model)
    with ws.store() as store:
        base = report_baselines(store, ws.schema, report)
    colors = [v["color"] for v in train.values() if "color" in v]
    majority = max(ws.schema.classes["color"], key=colors.count)
    assert base["color"].majority_class == majority
    head = report["heads"]["color"]
    truth = dict(zip(head["classes"], map(sum, head["confusion_matrix"])))
    assert base["color"].accuracy == pytest.approx(truth[majority] / head["n"])


def test_comparison_is_in_percent_and_points() -> None:
    a = _report([[5, 5], [0, 10]], ["red", "blue"])    # 75 %
    b = _report([[9, 1], [1, 9]], ["red", "blue"])     # 90 %
    base = majority_baselines({"color": {"red": 3, "blue": 1}}, b)
    [row] = comparison_rows(a, b, "#1", "#2", base)
    assert row["accuracy #1 (%)"] == 75.0 and row["accuracy #2 (%)"] == 90.0
    assert row["Δ accuracy (points)"] == 15.0 and row["macro F1 #1 (%)"] == 50.0
    assert row["majority baseline (%)"] == 50.0
    b["heads"]["color"]["accuracy"] = None
    assert comparison_rows(a, b, "#1", "#2")[0]["Δ accuracy (points)"] is None


# -- near-uniform scores --------------------------------------------------------------------------
def test_near_uniform_scores_are_flagged() -> None:
    rng = np.random.default_rng(0)
    flat = {a: dict(enumerate(rng.uniform(0.96, 1.0, 50))) for a in ("color", "type")}
    s = score_spread(flat, model_id=3)
    assert s.near_uniform and s.mean > AUTO_UNIFORM_ENTROPY and s.spread < 0.05
    assert "cold-start" in s.sentence() and "typiclust" in s.sentence() and "#3" in s.sentence()


def test_a_model_that_ranks_is_not_flagged() -> None:
    ranked = {"color": list(np.linspace(0.1, 0.99, 50)), "type": list(np.linspace(0.0, 0.9, 50))}
    s = score_spread(ranked)
    assert not s.near_uniform and s.spread > 0.5
    assert score_spread({"color": []}) is None


def test_round_check_reads_the_ranking_models_stored_scores(ws: Workspace) -> None:
    with ws.store() as store:
        number = store.latest_round()["number"]
        seed_round = min(r["number"] for r in store.rounds())
    s = round_score_spread(ws, number)      # build_trained ranks by entropy with model #1
    assert s is not None and s.model_id == 1 and s.images > 0
    assert s.near_uniform == (s.mean > AUTO_UNIFORM_ENTROPY)
    assert round_score_spread(ws, seed_round) is None    # a random seed batch: no model


# -- command line ---------------------------------------------------------------------------------
def test_cli_promote_and_rollback(ws: Workspace, capsys: pytest.CaptureFixture) -> None:
    from core.cli import build_parser, main
    with ws.store() as store:
        cur = store.current_model()
        store.add_model(cur["path"], make_current=False)      # model #2, ready, not current
    assert main(["--workspace", str(ws.root), "promote", "2"]) == 0
    assert "model 2 is now current (was model 1)" in capsys.readouterr().out
    assert main(["--workspace", str(ws.root), "rollback"]) == 0
    assert "model 1 is current again" in capsys.readouterr().out
    assert main(["--workspace", str(ws.root), "promote", "99"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no model #99" in err[0]
    with ws.store() as store:
        assert [e["action"] for e in audit_entries(store)[:2]] == ["rollback", "promote"]
    args = build_parser().parse_args(["train", "--force-promote"])
    assert args.force_promote is True
    assert build_parser().parse_args(["round", "--force-promote"]).force_promote is True
