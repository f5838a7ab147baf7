"""The queue: exclusions (test split, labelled, already queued), recording, weights, diversity, balance."""
from __future__ import annotations

import numpy as np
import pytest

from data.errors import UserError
from core.queue import build_queue, candidate_ids, queue_items
from core.registry import model_record, resolve_model_path
from core.scoring import PoolScores
from tests.al_helpers import make_model, make_pool


@pytest.fixture
def pool(workspace):
    ids = make_pool(workspace, 60, splits=("train", "val", "test"))
    with workspace.store() as store:
        test = {r.id for r in store.images(split="test")}
        labelled = [i for i in ids if i not in test][:4]
        for i in labelled:
            store.add_label(i, {"color": "red"}, source="import")
        queued = [i for i in ids if i not in test and i not in labelled][:3]
        store.create_round(queued, kind="seed", strategy="random")
    return workspace, ids, test, set(labelled), set(queued)


def test_random_queue_excludes_test_val_labelled_and_queued(pool):
    ws, ids, test, labelled, queued = pool
    with ws.store() as store:
        val = {r.id for r in store.images(split="val")}
    assert val
    res = build_queue(ws, "random", top_k=100)
    got = set(res.image_ids)
    assert got and not got & (test | val | labelled | queued)
    # everything left in the train split, nothing else: validation images never drift towards
    # hard examples (issue 11, defect 7)
    assert got == set(ids) - test - val - labelled - queued
    assert res.round_number == 1
    with ws.store() as store:
        rnd = store.round(1)
    assert rnd["kind"] == "al" and rnd["strategy"] == "random" and rnd["size"] == len(got)
    assert [it.image_id for it in queue_items(ws, 1)] == res.image_ids
    with pytest.raises(UserError, match="no unlabelled"):
        build_queue(ws, "random", top_k=5)


def test_uncertainty_queue_needs_model_then_ranks_and_records(pool):
    ws, ids, test, labelled, queued = pool
    with pytest.raises(UserError, match="needs a trained model"):
        build_queue(ws, "entropy", top_k=5)
    with pytest.raises(UserError, match="unknown strategy"):
        build_queue(ws, "entropyy", top_k=5)
    model_id = make_model(ws)
    res = build_queue(ws, "entropy", top_k=5)
    assert res.model_id == model_id and len(res.items) == 5
    assert not set(res.image_ids) & (test | labelled | queued)
    scores = [it.score for it in res.items]
    assert scores == sorted(scores, reverse=True)
    first = res.items[0]
    assert set(first.predictions) == {"color", "type", "orientation"}
    assert first.scores["entropy:color"] >= 0 and "bald:type" in first.scores
    # the recorded round carries the ranked ids, scores, params and model
    with ws.store() as store:
        rnd = store.latest_round()
        items = store.round_items(rnd["number"])
        assert store.scores(model_id, "entropy")        # scoring also filled the store
    assert [i["image_id"] for i in items] == res.image_ids
    assert [i["score"] for i in items] == pytest.approx(scores)
    assert rnd["model_id"] == model_id and rnd["params"]["top_k"] == 5
    # a second queue never repeats the first one's images, and reuses the saved scores
    res2 = build_queue(ws, "margin", top_k=5)
    assert not set(res2.image_ids) & set(res.image_ids)
    assert res2.timings["scored_now"] == 0.0
    # a preview records nothing
    before = len(candidate_ids(ws))
    preview = build_queue(ws, "bald", top_k=3, record=False)
    assert preview.round_number is None and len(candidate_ids(ws)) == before


def _write_pool_scores(ws, model_id, ids, probs, emb):
    folder = resolve_model_path(ws, model_record(ws, model_id)["path"]).parent
    names = {a: list(ws.schema.classes[a]) for a in ws.schema.attributes}
    PoolScores(model_id, np.asarray(ids), probs, emb,
               {a: np.zeros(len(ids), np.float32) for a in probs}, names, "test").save_arrays(folder)


def _crafted(ws, n):
    """Per-head probabilities with controlled entropy: row i gets uncertainty u[i]."""
    probs = {}
    for a in ws.schema.attributes:
        k = ws.schema.num_classes(a)
        probs[a] = np.tile(np.eye(k)[0], (n, 1)).astype(np.float32)
    return probs


def test_weights_focus_on_one_head(workspace):
    ids = make_pool(workspace, 6)
    model_id = make_model(workspace)
    probs = _crafted(workspace, 6)
    # image 0 unsure about colour only, image 1 unsure about orientation only
    kc, ko = workspace.schema.num_classes("color"), workspace.schema.num_classes("orientation")
    probs["color"][0] = np.full(kc, 1 / kc)
    probs["orientation"][1] = np.full(ko, 1 / ko) * 0.9 + np.eye(ko)[0] * 0.1
    _write_pool_scores(workspace, model_id, ids, probs, np.eye(6, 8, dtype=np.float32))
    plain = build_queue(workspace, "entropy", top_k=2, record=False)
    assert plain.image_ids == [ids[0], ids[1]]
    focus = build_queue(workspace, "entropy", top_k=2, weights={"orientation": 3.0}, record=False)
    assert focus.image_ids == [ids[1], ids[0]]
    with pytest.raises(UserError, match="unknown attributes"):
        build_queue(workspace, "entropy", top_k=2, weights={"colour": 1.0}, record=False)


def test_diversity_spreads_a_batch_of_near_duplicates(workspace):
    n = 24
    ids = make_pool(workspace, n)
    model_id = make_model(workspace)
    probs = _crafted(workspace, n)
    kc = workspace.schema.num_classes("color")
    rng = np.random.default_rng(0)
    # 16 near-identical frames (one embedding + noise) that are the most uncertain,
    # and 8 distinct images slightly less uncertain
    for i in range(n):
        mix = 0.95 if i < 16 else 0.8
        probs["color"][i] = mix * np.full(kc, 1 / kc) + (1 - mix) * np.eye(kc)[0]
    emb = np.concatenate([np.tile(rng.normal(size=(1, 32)), (16, 1)) + rng.normal(0, 1e-3, (16, 32)),
                          rng.normal(size=(8, 32))]).astype(np.float32)
    _write_pool_scores(workspace, model_id, ids, probs, emb)
    top = build_queue(workspace, "entropy", top_k=6, record=False)
    assert all(ids.index(i) < 16 for i in top.image_ids)            # plain: all duplicates
    for method in ("kcenter", "kmeans"):
        div = build_queue(workspace, "entropy", top_k=6, diversity=method, pool_factor=4,
                          record=False)
        dups = sum(ids.index(i) < 16 for i in div.image_ids)
        assert len(set(div.image_ids)) == 6 and dups <= 1, method
        assert div.params["diversity"] == method


def test_balance_favours_predicted_rare_classes(workspace):
    ids = make_pool(workspace, 8)
    model_id = make_model(workspace)
    types = list(workspace.schema.classes["type"])
    with workspace.store() as store:   # many sedans labelled, no buses
        for i in ids[:4]:
            store.add_label(i, {"type": "sedan"}, source="import")
    cand = ids[4:]
    probs = _crafted(workspace, len(cand))
    kt = len(types)
    # equal uncertainty everywhere; image 0 predicted sedan, image 1 predicted bus
    for row, cls in enumerate(["sedan", "bus", "sedan", "sedan"]):
        probs["type"][row] = 0.5 * np.eye(kt)[types.index(cls)] + 0.5 / kt
    _write_pool_scores(workspace, model_id, cand, probs, np.eye(4, 8, dtype=np.float32))
    plain = build_queue(workspace, "entropy", top_k=1, record=False)
    assert plain.image_ids == [cand[0]]                   # stable order: tie -> first
    bal = build_queue(workspace, "entropy", top_k=1, balance=True, record=False)
    assert bal.image_ids == [cand[1]]
    assert bal.params["rarity"]["type"]["bus"] > bal.params["rarity"]["type"]["sedan"]


def test_bald_after_scoring_without_mc_passes_rescores(workspace):
    """Issue 11, defect 2: `score --mc-passes 0` then `rank -s bald` must not rank by id."""
    from core.scoring import score_pool

    ids = make_pool(workspace, 24)
    model_id = make_model(workspace)
    first = score_pool(workspace, model_id, mc_passes=0)
    with workspace.store() as store:
        assert store.scores(model_id, "entropy")
        assert not store.scores(model_id, "bald")          # not computed, so not stored
    assert "bald" not in first.measures
    res = build_queue(workspace, "bald", top_k=5, record=False)
    assert res.timings["scored_now"] == 1.0                # rescored with MC passes
    assert len({round(it.score, 9) for it in res.items}) > 1
    assert [it.score for it in res.items] == sorted((it.score for it in res.items), reverse=True)
    with workspace.store() as store:
        assert len(store.scores(model_id, "bald")) == len(ids)
    # an explicit "no MC passes" for a BALD queue is refused, not silently zero
    score_pool(workspace, model_id, mc_passes=0)
    with pytest.raises(UserError, match="MC-dropout"):
        build_queue(workspace, "bald", top_k=5, record=False, score_kwargs={"mc_passes": 0})
