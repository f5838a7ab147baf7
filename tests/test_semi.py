"""Semi-supervised training: the masked unlabelled loss by hand, and no pseudo-label stored."""
from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from core.cli import main as cli_main
from data.cache import ImageCache
from data.workspace import Workspace, WorkspaceConfig
from data.dataset import load_unlabelled_pool
from models.semi import (FixMatchTerm, confident_pseudo_labels,
                         spread_labels, unlabelled_loss)
from core.training import train_and_promote
from models.train import TrainConfig
from tests.test_train import add_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _nll(logits: list[float], k: int) -> float:
    return -(logits[k] - math.log(sum(math.exp(v) for v in logits)))


def test_unlabelled_loss_masks_missing_attributes_and_unconfident_items() -> None:
    attrs = ["color", "type"]
    # weak view: colour head confident on items 0 and 2 (p = e^5/(e^5+2) = 0.987), unsure on 1
    weak = {"color": torch.tensor([[5.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 5.0]]),
            # type head confident everywhere, pseudo-label 1
            "type": torch.tensor([[0.0, 6.0], [0.0, 6.0], [0.0, 6.0]])}
    strong = {"color": torch.tensor([[1.0, 2.0, 0.5], [3.0, 0.0, 0.0], [0.2, 0.1, 0.3]]),
              "type": torch.tensor([[2.0, 1.0], [0.5, 0.5], [1.0, 3.0]])}
    # item 0 misses both; item 1 misses colour only; item 2 has colour labelled (not eligible)
    missing = torch.tensor([[True, True], [True, False], [False, True]])
    total, stats = unlabelled_loss(strong, weak, missing, attrs, threshold=0.95)
    # colour: eligible {0, 1}; confident among them {0} (pseudo 0); item 2 is confident but
    # labelled, so it is masked out. Mean over the 2 eligible.
    color = _nll([1.0, 2.0, 0.5], 0) / 2
    # type: eligible {0, 2}, both confident, pseudo-label 1
    typ = (_nll([2.0, 1.0], 1) + _nll([1.0, 3.0], 1)) / 2
    assert stats["color"]["eligible"] == 2 and stats["color"]["confident"] == 1
    assert stats["type"]["eligible"] == 2 and stats["type"]["confident"] == 2
    assert stats["color"]["loss"] == pytest.approx(color, rel=1e-5)
    assert float(total) == pytest.approx(color + typ, rel=1e-5)


def test_unlabelled_loss_inactive_or_ineligible_head_contributes_exactly_zero() -> None:
    weak = {"a": torch.tensor([[9.0, 0.0]]), "b": torch.tensor([[9.0, 0.0]])}
    strong = {"a": torch.tensor([[0.0, 9.0]], requires_grad=True),
              "b": torch.tensor([[0.0, 9.0]], requires_grad=True)}
    # head a: nothing missing; head b: missing but inactive (no real labels in the run)
    total, stats = unlabelled_loss(strong, weak, torch.tensor([[False, True]]), ["a", "b"],
                                   threshold=0.5, active=[True, False])
    assert float(total.detach()) == 0.0
    assert stats["b"]["confident"] == 0
    # below threshold: zero too, but the eligible count still divides
    total, stats = unlabelled_loss(strong, weak, torch.tensor([[True, True]]), ["a", "b"],
                                   threshold=0.99999)
    assert float(total.detach()) == 0.0 and stats["a"]["eligible"] == 1


def test_unlabelled_loss_gradient_flows_only_through_strong_view() -> None:
    weak = {"a": torch.tensor([[4.0, 0.0]], requires_grad=True)}
    strong = {"a": torch.tensor([[0.0, 0.0]], requires_grad=True)}
    total, _ = unlabelled_loss(strong, weak, torch.tensor([[True]]), ["a"], threshold=0.9)
    total.backward()
    assert weak["a"].grad is None
    assert strong["a"].grad is not None and float(strong["a"].grad.abs().sum()) > 0


@pytest.fixture
def semi_pool(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path / "ws").init(WorkspaceConfig(cache_size=32))
    add_images(ws, 24, split="train", seed=1, partial=True)
    add_images(ws, 24, split="train", seed=4, label=False)     # the unlabelled pool
    add_images(ws, 8, split="val", seed=2)
    add_images(ws, 8, split="test", seed=3, label=False)      # unlabelled, must not be used
    return ws


def _label_tables(ws: Workspace) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(ws.db_path)
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                for t in ("labels", "label_values", "ground_truth")}
    finally:
        conn.close()


def test_unlabelled_pool_is_train_split_images_missing_an_attribute(semi_pool: Workspace) -> None:
    with semi_pool.store() as store:
        pool = load_unlabelled_pool(store, semi_pool.schema)
        train_ids = {r.id for r in store.images(split="train")}
        labels = store.current_labels(split="train")
    assert set(pool.image_ids) <= train_ids
    attrs = list(semi_pool.schema.attributes)
    for image_id, miss in zip(pool.image_ids, pool.missing):
        have = labels.get(image_id, {})
        assert [a not in have for a in attrs] == list(miss)
    # the 24 unlabelled ones are all in (every schema attribute missing)
    assert sum(bool(m.all()) for m in pool.missing) == 24


def test_fixmatch_training_never_writes_a_pseudo_label(semi_pool: Workspace) -> None:
    before = _label_tables(semi_pool)
    config = TrainConfig(epochs=2, batch_size=8, image_size=32, pretrained=False,
                         num_threads=1, semi_supervised="fixmatch", semi_threshold=0.1)
    result = train_and_promote(semi_pool, config).train
    assert result.status == "succeeded"
    assert _label_tables(semi_pool) == before
    shares = [h["pseudo_labelled_share"] for h in result.history]
    assert len(shares) == 2 and set(shares[0]) == set(semi_pool.schema.attributes)
    # threshold 0.1 <= 1/K: every eligible image of an active head gets a pseudo-label; only
    # heads with real labels take part (type has none in this pool)
    assert shares[-1]["color"] == 1.0 and shares[-1]["orientation"] == 1.0
    assert shares[-1]["type"] == 0.0
    with semi_pool.store() as store:
        assert store.models()[0]["params"]["semi_supervised"] == "fixmatch"


def test_cli_semi_supervised_flag_and_bad_method(semi_pool: Workspace, capsys) -> None:
    before = _label_tables(semi_pool)
    rc = cli_main(["--workspace", str(semi_pool.root), "train", "--epochs", "1",
                   "--image-size", "32", "--batch-size", "8", "--no-pretrained", "--threads", "1",
                   "--no-eval", "--semi-supervised", "fixmatch", "--semi-threshold", "0.5"])
    assert rc == 0
    assert _label_tables(semi_pool) == before
    with pytest.raises(SystemExit):
        cli_main(["--workspace", str(semi_pool.root), "train", "--semi-supervised", "magic"])
    with pytest.raises(Exception, match="semi-supervised"):
        train_and_promote(semi_pool, TrainConfig(epochs=1, image_size=32, pretrained=False,
                                                 semi_supervised="magic"))


def test_fixmatch_term_is_none_without_unlabelled_images(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws").init(WorkspaceConfig(cache_size=32))
    ids = add_images(ws, 6, split="train", seed=1)
    with ws.store() as store:
        for i in ids:  # fully label every attribute of the default schema
            store.add_label(i, {"color": "red", "type": "sedan", "orientation": "front"},
                            source="simulated")
        pool = load_unlabelled_pool(store, ws.schema)
    term = FixMatchTerm.build(pool, ImageCache(ws.cache_dir, 32), ws.schema,
                              labelled_targets=np.zeros((6, 3), np.int64),
                              image_size=32, batch_size=4)
    assert term is None


def test_spread_labels_follows_clusters_and_keeps_absent_classes_at_zero() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal([5, 0, 0], 0.1, (20, 3))
    b = rng.normal([0, 5, 0], 0.1, (20, 3))
    x = np.vstack([a, b])
    y = np.full(40, -1)
    y[0], y[20] = 0, 2                     # class 1 of 3 is never labelled
    probs = spread_labels(x, y, 3, n_neighbors=5)
    assert probs.shape == (40, 3)
    assert (probs[:20].argmax(1) == 0).all() and (probs[20:].argmax(1) == 2).all()
    assert np.allclose(probs[:, 1], 0.0)
    rows, classes = confident_pseudo_labels(probs, 0.9)
    assert len(rows) > 0 and set(classes) <= {0, 2}
