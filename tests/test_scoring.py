"""Pool scoring: ONNX Runtime and PyTorch agree on the ranking; what is stored and where."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.acquisition import STRATEGIES, bald, strategy_scores
from core.scoring import (EMBEDDING_IDS_FILE, EMBEDDINGS_FILE, HeadParams, load_pool_scores,
                            mc_dropout_heads, pool_scores_for, score_pool)
from tests.al_helpers import make_model, make_pool


@pytest.fixture
def scored_ws(workspace):
    ids = make_pool(workspace, 48, splits=("train", "val", "test"))
    model_id = make_model(workspace)
    return workspace, ids, model_id


def _ranking(pool, name):
    return np.argsort(-strategy_scores(STRATEGIES[name], pool.uncertainty), kind="stable")


def test_onnx_and_torch_rank_the_same(scored_ws):
    from core.exports import export_onnx

    ws, ids, model_id = scored_ws
    torch.set_num_threads(1)
    by_torch = score_pool(ws, backend="torch", save=False, seed=1)
    export_onnx(ws, model_id, parity_images=16)
    by_onnx = score_pool(ws, backend="auto", prefer_int8=False, save=False, seed=1, threads=1)
    assert by_torch.backend == "torch" and by_onnx.backend == "onnx"
    assert list(by_torch.image_ids) == list(by_onnx.image_ids)
    for a in by_torch.attributes:
        np.testing.assert_allclose(by_onnx.probs[a], by_torch.probs[a], atol=1e-4)
    np.testing.assert_allclose(by_onnx.embeddings, by_torch.embeddings, rtol=1e-3, atol=1e-3)
    for name in ("entropy", "entropy-max", "margin", "least-confidence"):
        assert list(_ranking(by_onnx, name)) == list(_ranking(by_torch, name)), name
    # BALD uses the same seeded dropout masks on (nearly) the same embeddings
    top_t = set(_ranking(by_torch, "bald")[:10])
    top_o = set(_ranking(by_onnx, "bald")[:10])
    assert len(top_t & top_o) >= 9
    # "auto" prefers a published int8 file (a copy of the fp32 one stands in for it here)
    import shutil

    from core.exports import export_dir
    from models.export import FP32_NAME, INT8_NAME
    folder = export_dir(ws, model_id)
    shutil.copy(folder / FP32_NAME, folder / INT8_NAME)
    assert score_pool(ws, save=False, mc_passes=0, threads=1).backend == "onnx-int8"
    assert score_pool(ws, save=False, mc_passes=0, threads=1, prefer_int8=False).backend == "onnx"


def test_score_pool_stores_predictions_scores_and_embeddings(scored_ws):
    ws, ids, model_id = scored_ws
    with ws.store() as store:
        test = {r.id for r in store.images(split="test")}
        store.add_label(ids[0], {"color": "red"}, source="import")
    calls = []
    pool = score_pool(ws, progress=lambda p: calls.append(p.fraction), batch_size=8)
    expected = [i for i in ids if i not in test and i != ids[0]]
    assert list(pool.image_ids) == expected
    assert calls and calls[-1] == pytest.approx(1.0) and calls == sorted(calls)
    with ws.store() as store:
        preds = store.predictions(model_id)
        ent = store.scores(model_id, "entropy")
        ent_color = store.scores(model_id, "entropy:color")
        bald_type = store.scores(model_id, "bald:type")
    assert set(preds) == set(expected) and set(ent) == set(expected) and set(bald_type) == set(expected)
    first = expected[0]
    value, prob = preds[first]["color"]
    row = 0
    assert value == ws.schema.classes["color"][int(pool.probs["color"][row].argmax())]
    assert prob == pytest.approx(float(pool.probs["color"][row].max()), rel=1e-5)
    assert ent_color[first] == pytest.approx(float(pool.per_head("entropy")["color"][row]), rel=1e-5)
    # the embeddings: an .npy in the model folder, row i belonging to embedding_ids[i]
    folder = ws.root / "models" / "m1"
    emb = np.load(folder / EMBEDDINGS_FILE)
    assert list(np.load(folder / EMBEDDING_IDS_FILE)) == expected
    assert emb.shape == (len(expected), 512)
    np.testing.assert_allclose(emb, pool.embeddings)
    again = pool_scores_for(ws, model_id)
    assert again is not None and list(again.image_ids) == expected
    assert again.mc_passes == 10 and again.measures == ["entropy", "margin", "least_confidence", "bald"]
    np.testing.assert_allclose(again.bald["type"], pool.bald["type"])
    assert load_pool_scores(ws.root / "nowhere") is None


def test_mc_dropout_heads_match_the_network():
    from data.schema import DEFAULT_SCHEMA
    from models.network import MultiHeadResNet

    torch.manual_seed(0)
    net = MultiHeadResNet(DEFAULT_SCHEMA, dropout=0.3)
    heads = HeadParams.from_model(net)
    emb = np.random.default_rng(0).random((5, 512), dtype=np.float32)
    # with no dropout every pass equals the network's heads, and BALD is zero
    no_drop = HeadParams(0.0, heads.weights, heads.biases)
    samples = mc_dropout_heads(emb, no_drop, 3, np.random.default_rng(0))
    with torch.no_grad():
        want = {a: torch.softmax(net.heads[a](torch.from_numpy(emb)), 1).numpy()
                for a in net.attributes}
    for a in net.attributes:
        np.testing.assert_allclose(samples[a][1], want[a], atol=1e-5)
        assert bald(samples[a]) == pytest.approx(np.zeros(5), abs=1e-6)
    # with dropout, passes differ and their mean stays close to the deterministic output
    drop = mc_dropout_heads(emb, heads, 200, np.random.default_rng(1))
    assert heads.dropout == pytest.approx(0.3)
    for a in net.attributes:
        assert not np.allclose(drop[a][0], drop[a][1])
        np.testing.assert_allclose(drop[a].mean(axis=0), want[a], atol=0.05)
