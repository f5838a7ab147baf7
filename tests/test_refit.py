"""The two-speed loop's fast half: head-only refits on embeddings and the re-ranked queue."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core import refit as refit_mod
from core.embeddings import PoolEmbeddings
from core.refit import refit_and_rerank
from core.refit_status import (DEFAULT_EVERY, due, last_refit, ranking_source, refit_scores,
                               request_refit)
from data.workspace import Workspace, WorkspaceConfig
from models.backbones import WeightsOrigin
from models.heads import fit_heads

CLASSES = {"color": ["red", "green", "blue", "gray"], "type": ["car", "bus", "truck"]}


def _blobs(rng: np.random.Generator, n: int, dim: int = 32, spread: float = 0.3):
    """Embeddings whose color and type each live in their own orthogonal block of features."""
    color = rng.integers(0, 4, n)
    kind = rng.integers(0, 3, n)
    x = rng.normal(0, spread, (n, dim)).astype(np.float32)
    x[np.arange(n), color] += 4.0           # features 0..3: color
    x[np.arange(n), 8 + kind] += 4.0        # features 8..10: type
    labels = [{"color": CLASSES["color"][c], "type": CLASSES["type"][k]} for c, k in zip(color, kind)]
    return x, labels


# -- models/heads.py ------------------------------------------------------------------------------
def test_separable_blobs_with_masked_attributes_are_learnt_exactly(rng):
    x, labels = _blobs(rng, 400)
    # hide color on every third image and type on every fifth: those rows must not train that head
    masked = [{a: v for a, v in lab.items()
               if not (a == "color" and i % 3 == 0) and not (a == "type" and i % 5 == 0)}
              for i, lab in enumerate(labels)]
    fit = fit_heads(x[:300], masked[:300], CLASSES)
    assert fit.n_train() == {"color": sum(1 for i in range(300) if i % 3),
                             "type": sum(1 for i in range(300) if i % 5)}
    probs = fit.predict_proba(x[300:])
    for attr in CLASSES:
        pred = [CLASSES[attr][k] for k in probs[attr].argmax(axis=1)]
        truth = [lab[attr] for lab in labels[300:]]
        assert np.mean(np.array(pred) == np.array(truth)) >= 0.99, attr
        assert np.allclose(probs[attr].sum(axis=1), 1.0, atol=1e-5)


def test_a_masked_row_does_not_teach_its_missing_head(rng):
    """A contradicting value on rows whose attribute is missing would flip the head if used."""
    x, labels = _blobs(rng, 200)
    masked = [dict(lab) for lab in labels]
    for lab in masked[:150]:
        del lab["type"]  # type known only for the last 50 images
    fit = fit_heads(x, masked, CLASSES)
    assert fit.heads["type"].n_train == 50
    assert fit.heads["color"].n_train == 200


def test_unseen_classes_get_zero_and_a_one_class_head_stays_uniform(rng):
    x, labels = _blobs(rng, 120)
    only = [{"color": lab["color"], "type": "bus"} for lab in labels if lab["color"] != "gray"]
    xs = x[[i for i, lab in enumerate(labels) if lab["color"] != "gray"]]
    fit = fit_heads(xs, only, CLASSES)
    p = fit.predict_proba(x)
    assert fit.heads["color"].seen == ["red", "green", "blue"]
    assert np.all(p["color"][:, CLASSES["color"].index("gray")] == 0)
    assert not fit.heads["type"].fitted and any("type" in w for w in fit.warnings)
    assert np.allclose(p["type"], 1 / 3)


def test_two_classes_and_folded_scaling_match_sklearn(rng):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, labels = _blobs(rng, 150, spread=2.0)
    two = [{"color": "red" if lab["color"] in ("red", "green") else "blue"} for lab in labels]
    fit = fit_heads(x, two, {"color": CLASSES["color"]}, class_weight="balanced")
    scaler = StandardScaler().fit(x)
    ref = LogisticRegression(class_weight="balanced", max_iter=500).fit(
        scaler.transform(x), [lab["color"] for lab in two])
    expected = ref.predict_proba(scaler.transform(x))  # columns: blue, red (sorted)
    got = fit.predict_proba(x)["color"]
    np.testing.assert_allclose(got[:, 2], expected[:, 0], atol=1e-4)   # blue
    np.testing.assert_allclose(got[:, 0], expected[:, 1], atol=1e-4)   # red


def test_bad_inputs_are_refused(rng):
    x, labels = _blobs(rng, 20)
    with pytest.raises(ValueError, match="not classes"):
        fit_heads(x, [{"color": "purple"}] * 20, CLASSES)
    with pytest.raises(ValueError, match="labels for"):
        fit_heads(x, labels[:5], CLASSES)
    with pytest.raises(ValueError, match="class_weight"):
        fit_heads(x, labels, CLASSES, class_weight="auto")
    fit = fit_heads(x, labels, CLASSES)
    with pytest.raises(ValueError, match="shape"):
        fit.predict_proba(x[:, :5])


# -- core/refit.py on a workspace with hand-made embeddings ----------------------------------------
def _pool_workspace(tmp_path, n: int = 120):
    """A pool of n images (splits train/val/test round-robin) whose embeddings encode color."""
    from tests.al_helpers import make_pool

    ws = Workspace(tmp_path / "ws").init(WorkspaceConfig(cache_size=16))
    ids = make_pool(ws, n, splits=("train", "train", "val", "test"))
    rng = np.random.default_rng(1)
    colors = ws.schema.classes["color"]
    truth = {i: colors[k % 3] for k, i in enumerate(ids)}  # three colors in use
    x = rng.normal(0, 0.3, (n, 12)).astype(np.float32)
    for row, i in enumerate(ids):
        x[row, colors.index(truth[i])] += 3.0
    # some images sit between two color blobs: the ones a fresh ranking must put first
    ambiguous = set(ids[60::7])
    for row, i in enumerate(ids):
        if i in ambiguous:
            x[row, :len(colors)] = 0
            x[row, colors.index(truth[i])] = 1.5
            x[row, (colors.index(truth[i]) + 1) % 3] = 1.5
    emb = PoolEmbeddings(np.array(ids, np.int64), x, "hand", WeightsOrigin("hand", "imagenet", "test"))
    return ws, ids, truth, emb, ambiguous


def _label(ws, ids, truth):
    with ws.store() as store:
        for i in ids:
            store.add_label(i, {"color": truth[i]}, source="builtin", annotator="t")


def test_refit_reranks_the_open_batch_and_never_uses_test_images(tmp_path):
    ws, ids, truth, emb, ambiguous = _pool_workspace(tmp_path)
    with ws.store() as store:
        split = {r.id: r.split for r in store.images()}
        batch = ids[60:]      # one open batch, in id order (like a random seed round)
        number = store.create_round(batch, kind="seed", strategy="random")
    labelled = ids[:60]
    _label(ws, labelled, truth)
    # poison: a wrong label on every test image; a refit that used them would learn it
    test_ids = [i for i in labelled if split[i] == "test"]
    with ws.store() as store:
        for i in test_ids:
            store.add_label(i, {"color": "white"}, source="builtin", annotator="t")

    record = refit_and_rerank(ws, embeddings=emb)

    train_labelled = [i for i in labelled if split[i] == "train"]
    assert record.n_train["color"] == len(train_labelled)  # not val, not test
    pool = refit_scores(ws)
    assert pool is not None and pool.backend == "head-refit"
    assert not set(pool.image_ids.tolist()) & {i for i in ids if split[i] in ("val", "test")}
    assert "white" not in [pool.class_names["color"][k] for k in pool.probs["color"].argmax(1)]
    assert record.val_accuracy["color"] == 1.0

    with ws.store() as store:
        items = store.round_items(number)
        rnd = store.round(number)
    order = [it["image_id"] for it in items]
    assert sorted(order) == sorted(batch)                       # same images, new order
    # val and test images keep their slots: their order is never driven by a model
    for it in items:
        if split[it["image_id"]] in ("val", "test"):
            assert it["rank"] == batch.index(it["image_id"])
    movable = [i for i in order if split[i] not in ("val", "test")]
    top = movable[:len(ambiguous & set(movable))]
    assert set(top) == ambiguous & set(movable)                  # the uncertain ones first
    assert rnd["record"]["reranked"]["labels"] == len(train_labelled)
    assert record.reranked == {str(number): len(movable)}
    assert "from head refit on" in ranking_source(ws, number)
    assert last_refit(ws).labelled == record.labelled


def test_labelled_and_test_items_keep_their_rank_and_next_image_follows_the_new_order(tmp_path):
    from core.labeling import next_image_id

    ws, ids, truth, emb, ambiguous = _pool_workspace(tmp_path)
    batch = ids[50:]
    with ws.store() as store:
        number = store.create_round(batch, kind="al", strategy="margin",
                                    params={"weights": {"color": 2.0}})
        split = {r.id: r.split for r in store.images()}
    _label(ws, ids[:60], truth)          # the batch's first 10 are labelled
    record = refit_and_rerank(ws, embeddings=emb)
    assert record.strategies[str(number)] == "margin"
    with ws.store() as store:
        ranks = {it["image_id"]: it["rank"] for it in store.round_items(number)}
        first = next_image_id(store, number)
    for i in batch[:10]:
        assert ranks[i] == batch.index(i)
    assert first in ambiguous and split[first] == "train"


def test_bald_rounds_are_reranked_by_entropy_and_unknown_strategies_by_the_default():
    assert refit_mod._strategy_for("bald", "entropy").name == "entropy"
    assert refit_mod._strategy_for("bald-max", "entropy").name == "entropy-max"
    assert refit_mod._strategy_for("typiclust", "margin").name == "margin"
    assert refit_mod._strategy_for("random", "entropy").name == "entropy"
    assert refit_mod._strategy_for("least-confidence", "entropy").name == "least-confidence"


def test_no_train_labels_and_a_strategy_without_probabilities_are_readable_errors(tmp_path):
    from data.errors import UserError

    ws, ids, truth, emb, _ = _pool_workspace(tmp_path)
    with pytest.raises(UserError, match="no labelled train-split images"):
        refit_and_rerank(ws, embeddings=emb)
    with pytest.raises(UserError, match="head refit ranks by"):
        refit_and_rerank(ws, embeddings=emb, strategy="bald")


def test_refit_is_due_every_n_labels_or_at_batch_end(tmp_path):
    ws, ids, truth, emb, _ = _pool_workspace(tmp_path)
    with ws.store() as store:
        store.create_round(ids[:12], kind="seed", strategy="random")
        store.create_round(ids[12:40], kind="al", strategy="entropy")
    assert not due(ws)
    _label(ws, ids[12:12 + DEFAULT_EVERY - 1], truth)
    assert not due(ws)
    _label(ws, [ids[12 + DEFAULT_EVERY - 1]], truth)
    assert due(ws)
    refit_and_rerank(ws, embeddings=emb)
    assert not due(ws)
    _label(ws, ids[:3], truth)          # 3 new labels, batch of 12 not finished
    assert not due(ws)
    _label(ws, ids[3:12], truth)        # the first batch is now complete
    assert due(ws, every=100)


def test_request_refit_starts_one_job_and_the_job_reranks(tmp_path, monkeypatch):
    from core.jobs import get_job, run_job

    ws, ids, truth, emb, ambiguous = _pool_workspace(tmp_path)
    monkeypatch.setattr(refit_mod, "pool_embeddings", lambda *a, **k: emb)
    monkeypatch.setenv("CARGROUP_AUTO_REFIT", "1")
    with ws.store() as store:
        number = store.create_round(ids[60:], kind="seed", strategy="random")
    _label(ws, ids[:60], truth)
    job_id = request_refit(ws, spawn=False)
    assert job_id is not None
    assert request_refit(ws, spawn=False) is None   # one at a time
    assert run_job(ws, job_id) == "succeeded", get_job(ws, job_id)["message"]
    job = get_job(ws, job_id)
    assert "re-ranked round" in job["message"]
    assert job["result"]["refit"]["reranked"][str(number)] > 0
    assert request_refit(ws, spawn=False) is None   # nothing new since
    _label(ws, ids[60:75], truth)
    monkeypatch.setenv("CARGROUP_AUTO_REFIT", "0")
    assert request_refit(ws, spawn=False) is None   # switched off


# -- end to end on a tiny demo workspace, with the real embedding path ----------------------------
def test_refit_end_to_end_on_a_demo_pool_changes_the_queue_order(tmp_path, monkeypatch,
                                                                 one_torch_thread):
    """Demo pool -> seed batch -> labels -> refit (real backbone embeddings) -> new order,
    then more labels -> another refit -> another order. The CLI prints the same refit."""
    import core.embeddings as emb_mod
    from core.annotator import simulate_labels
    from core.cli import main
    from data.demo import create_demo_pool
    from core.rounds import sample_first_batch
    from models.backbones import load_backbone

    # offline test machine: skip the ImageNet download attempt, keep everything else real
    monkeypatch.setattr(emb_mod, "load_backbone", lambda name: load_backbone(name, pretrained=False))
    embedded = []
    real_embed = emb_mod.embed_images
    monkeypatch.setattr(emb_mod, "embed_images",
                        lambda module, images, size, **kw: embedded.append(len(images))
                        or real_embed(module, images, size, **kw))
    ws = Workspace(tmp_path / "demo").init(WorkspaceConfig(cache_size=32))
    create_demo_pool(ws, 80, seed=0, size=32)
    with ws.store() as store:
        number, batch = sample_first_batch(store, 70, seed=0)
        before = [it["image_id"] for it in store.round_items(number)]
        split = {r.id: r.split for r in store.images()}
        simulate_labels(store, ws.schema, batch[:30], round_id=store.round(number)["id"])

    first = refit_and_rerank(ws)
    assert first.backbone == emb_mod.default_backbone()
    assert sum(embedded) == 160                      # every pool image embedded once, and mirrored
    assert first.mirror
    assert (ws.root / "embeddings").is_dir()
    with ws.store() as store:
        after = [it["image_id"] for it in store.round_items(number)]
        split_of_test = [i for i in after if split[i] == "test"]
    assert sorted(after) == sorted(before) and after != before
    assert [after.index(i) for i in split_of_test] == [before.index(i) for i in split_of_test]

    with ws.store() as store:
        todo = [i for i in after if split[i] == "train" and i not in set(batch[:30])][:10]
        simulate_labels(store, ws.schema, todo, round_id=store.round(number)["id"])
    assert main(["--workspace", str(ws.root), "refit", "--json"]) == 0
    second = last_refit(ws)
    assert second.labelled == first.labelled + 10
    assert sum(embedded) == 160                      # the second refit reused both caches
    with ws.store() as store:
        again = [it["image_id"] for it in store.round_items(number)]
    assert again != after
    with ws.store() as store:
        rec = json.loads(store.get_meta("head_refit"))
        visited = set(store.current_labels(include_empty=True))
    pending = [i for i in batch if split[i] == "train" and i not in visited]
    assert rec["reranked"][str(number)] == len(pending)
