"""Cold-start selection end to end: pool embeddings cache, typicality queues with no model, auto."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from torch import nn

import core.embeddings as embeddings_mod
from core.cli import main
from core.embeddings import cache_path, pool_embeddings
from core.queue import build_queue
from core.selection import AUTO_TYPICALITY_BELOW, choose_auto
from data.cache import ImageCache
from models.backbones import Backbone, WeightsOrigin

# colour groups of different sizes: (mean RGB, count); within a group the shade varies a little
GROUPS = [((200, 30, 30), 13), ((30, 200, 30), 9), ((30, 30, 200), 5)]


class _Loader:
    """A stand-in for models.backbones.load_backbone: mean colour per channel as the embedding
    (so the right answer is known) with a chosen weights origin; counts its calls."""

    def __init__(self, kind: str = "imagenet") -> None:
        self.kind, self.calls = kind, 0

    def __call__(self, name: str, **_: object) -> Backbone:
        self.calls += 1
        module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        detail = "random init" if self.kind == "random" else "ImageNet (test)"
        return Backbone(name, module, 3, WeightsOrigin(name, self.kind, detail))


@pytest.fixture
def loader(monkeypatch):
    fake = _Loader()
    monkeypatch.setattr(embeddings_mod, "load_backbone", fake)
    return fake


def _add_images(ws, colours, start=0, split="train"):
    size = ws.config.cache_size
    imgs = np.stack([np.full((size, size, 3), c, np.uint8) for c in colours])
    rows = ImageCache(ws.cache_dir, size).append(imgs)
    ids = []
    with ws.store() as store:
        for i, (row, img) in enumerate(zip(rows, imgs)):
            n = start + i
            image_id, _ = store.add_image(path=f"pool/c{n:04d}.png", name=f"c{n:04d}.png",
                                          sha256=hashlib.sha256(img.tobytes() + bytes([n % 256, n // 256])).hexdigest(),
                                          width=size, height=size, nbytes=img.nbytes, split=split,
                                          cache_row=row)
            ids.append(image_id)
    return ids


def _colour_pool(ws):
    """Groups of shades of one colour: the dominant channel moves by 0, ±1, ±4, ±9, ... (k²), so
    shades thin out away from the group's middle shade, its most typical image by construction."""
    colours, group, central = [], [], []
    for g, (rgb, n) in enumerate(GROUPS):
        dominant = int(np.argmax(rgb))
        for j in range(n):
            k = (j + 1) // 2
            shift = (1 if j % 2 else -1) * k * k
            shade = list(rgb)
            shade[dominant] += shift
            if j == 0:
                central.append(len(colours))
            colours.append(tuple(shade))
            group.append(g)
    ids = _add_images(ws, colours)
    return ids, np.array(group), central


def test_pool_embeddings_cache_only_embeds_new_images(workspace, loader):
    ids = _add_images(workspace, [(10, 20, 30), (200, 100, 0)])
    emb = pool_embeddings(workspace, "resnet18")
    assert list(emb.ids) == ids and emb.vectors.shape == (2, 3) and emb.vectors.dtype == np.float32
    assert emb.computed == 2 and emb.pretrained and loader.calls == 1
    assert cache_path(workspace, "resnet18", "imagenet", 64).is_file()
    # brighter red channel for the second image, as the mean colour says
    assert emb.vectors[1, 0] > emb.vectors[0, 0]
    again = pool_embeddings(workspace, "resnet18")
    assert again.computed == 0 and loader.calls == 1            # pretrained cache: no network
    np.testing.assert_array_equal(again.vectors, emb.vectors)
    more = _add_images(workspace, [(0, 0, 0)], start=2)
    grown = pool_embeddings(workspace, "resnet18")
    assert grown.computed == 1 and list(grown.ids) == ids + more
    np.testing.assert_array_equal(grown.vectors[:2], emb.vectors)


def test_random_init_cache_is_replaced_once_pretrained_weights_load(workspace, monkeypatch):
    _add_images(workspace, [(10, 20, 30), (200, 100, 0)])
    rnd = _Loader("random")
    monkeypatch.setattr(embeddings_mod, "load_backbone", rnd)
    first = pool_embeddings(workspace, "resnet18")
    assert not first.pretrained and first.origin.kind == "random"
    assert pool_embeddings(workspace, "resnet18").computed == 0 and rnd.calls == 2  # re-checked
    pre = _Loader("imagenet")
    monkeypatch.setattr(embeddings_mod, "load_backbone", pre)
    second = pool_embeddings(workspace, "resnet18")
    assert second.pretrained and second.computed == 2           # not mixed with random ones


def test_typiclust_queue_without_a_model_picks_each_groups_typical_image(workspace, loader):
    ids, group, central = _colour_pool(workspace)
    res = build_queue(workspace, "typiclust", top_k=3, record=True)
    assert res.model_id is None and res.round_number == 0
    assert [int(group[ids.index(i)]) for i in res.image_ids] == [0, 1, 2]   # largest group first
    assert res.image_ids == [ids[c] for c in central]
    assert res.params["embeddings"]["origin"] == "imagenet"
    # the next batch skips the groups the first one covered: queued images count as covered
    nxt = build_queue(workspace, "typiclust", top_k=3, record=False)
    assert not set(nxt.image_ids) & set(res.image_ids)
    with pytest.raises(Exception, match="drop --diversity"):
        build_queue(workspace, "probcover", top_k=2, diversity="kcenter", record=False)
    pc = build_queue(workspace, "probcover", top_k=2, record=False)
    assert len(set(pc.image_ids)) == 2 and pc.params["embeddings"]["delta"] > 0


def test_auto_without_a_model_uses_typicality_and_says_why(workspace, loader, capsys):
    _colour_pool(workspace)
    res = build_queue(workspace, "auto", top_k=3, record=False)
    assert res.params["auto"]["chose"] == "typiclust"
    assert res.reason.startswith("typicality: no trained model")
    ws = ["--workspace", str(workspace.root)]
    assert main([*ws, "rank", "--strategy", "auto", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "typicality: no trained model" in out and "recorded as round 0" in out


def test_cli_says_when_embeddings_come_from_a_random_init_network(workspace, monkeypatch, capsys):
    _colour_pool(workspace)
    monkeypatch.setattr(embeddings_mod, "load_backbone", _Loader("random"))
    ws = ["--workspace", str(workspace.root)]
    assert main([*ws, "rank", "--strategy", "typiclust", "--top", "2", "--preview"]) == 0
    assert "random-init" in capsys.readouterr().out


def test_choose_auto_rule():
    assert choose_auto(0, False).strategy == "typiclust"
    low = choose_auto(40, True, 0.5)
    assert low.strategy == "typiclust" and "only 40 training labels" in low.reason
    flat = choose_auto(AUTO_TYPICALITY_BELOW + 10, True, 0.98)
    assert flat.strategy == "typiclust" and "too uncertain to rank" in flat.reason
    ready = choose_auto(AUTO_TYPICALITY_BELOW + 10, True, 0.6)
    assert (ready.strategy, ready.sampling, ready.diversity) == ("entropy", "power", "kcenter")
    assert ready.reason.startswith("uncertainty:")


def _scored(ws, ids, model_id, probs, emb):
    from core.scoring import PoolScores
    from core.registry import model_record, resolve_model_path

    folder = resolve_model_path(ws, model_record(ws, model_id)["path"]).parent
    names = {a: list(ws.schema.classes[a]) for a in ws.schema.attributes}
    PoolScores(model_id, np.asarray(ids), probs, emb, {}, names, "test").save_arrays(folder)
    return folder


def _probs(ws, n, mix):
    """Every head ``mix`` of the way from one-hot to uniform (normalised entropy grows with mix)."""
    out = {}
    for a in ws.schema.attributes:
        k = ws.schema.num_classes(a)
        out[a] = np.tile(mix * np.full(k, 1 / k) + (1 - mix) * np.eye(k)[0], (n, 1)).astype(np.float32)
    return out


def test_core_set_queue_counts_labelled_images_as_centres(workspace):
    from tests.al_helpers import make_model, make_pool

    ids = make_pool(workspace, 30)
    model_id = make_model(workspace)
    labelled, cand = ids[:3], ids[3:]
    with workspace.store() as store:
        for i in labelled:
            store.add_label(i, {"color": "red"}, source="import")
    # candidates in three regions; the biggest, region 0, is where the labelled images are
    regions = np.eye(3, 16, dtype=np.float32) * 10
    region = np.array([0] * 17 + [1] * 5 + [2] * 5)
    rng = np.random.default_rng(0)
    emb = regions[region] + rng.normal(0, 0.01, (len(cand), 16)).astype(np.float32)
    folder = _scored(workspace, cand, model_id, _probs(workspace, len(cand), 0.5), emb)
    np.savez(folder / "covered_embeddings.npz", ids=np.asarray(labelled, np.int64),
             vectors=regions[[0, 0, 0]] + 0.001)
    res = build_queue(workspace, "entropy", top_k=2, diversity="kcenter", pool_factor=20,
                      record=False)
    assert sorted(int(region[cand.index(i)]) for i in res.image_ids) == [1, 2]


def test_auto_switches_to_uncertainty_only_with_enough_labels_and_a_model_that_ranks(
        workspace, loader, monkeypatch):
    import core.selection as selection
    from tests.al_helpers import make_model

    ids, group, central = _colour_pool(workspace)
    model_id = make_model(workspace)
    with workspace.store() as store:
        store.add_label(ids[-1], {"color": "blue"}, source="import")
    cand = ids[:-1]
    emb = np.random.default_rng(0).normal(size=(len(cand), 512)).astype(np.float32)
    _scored(workspace, cand, model_id, _probs(workspace, len(cand), 0.3), emb)
    few = build_queue(workspace, "auto", top_k=3, record=False)
    assert few.params["auto"]["chose"] == "typiclust" and "only 1 training labels" in few.reason
    monkeypatch.setattr(selection, "AUTO_TYPICALITY_BELOW", 1)
    ready = build_queue(workspace, "auto", top_k=3, record=False, seed=5)
    assert ready.params["auto"]["chose"] == "entropy"
    assert ready.params["sampling"] == "power" and ready.params["diversity"] == "kcenter"
    assert ready.reason.startswith("uncertainty:")
    again = build_queue(workspace, "auto", top_k=3, record=False, seed=5)
    assert again.image_ids == ready.image_ids                     # seeded: reproducible
    # near-uniform scores: the model cannot rank yet, back to typicality
    _scored(workspace, cand, model_id, _probs(workspace, len(cand), 0.999), emb)
    flat = build_queue(workspace, "auto", top_k=3, record=False)
    assert flat.params["auto"]["chose"] == "typiclust" and "too uncertain to rank" in flat.reason


def test_typicality_repick_after_a_race_reads_no_embeddings_in_the_transaction(
        workspace, loader, monkeypatch):
    """A pick taken by another process is dropped and the batch re-picked under the write lock;
    the re-pick must reuse the embeddings loaded before the lock (issue 11), not reload them."""
    import core.queue as queue_mod
    from data.store import ProjectStore

    ids, _, _ = _colour_pool(workspace)
    loads: list[str] = []
    real_embeddings = queue_mod.pool_embeddings

    def counted(ws, *args, **kwargs):
        loads.append("embeddings")
        return real_embeddings(ws, *args, **kwargs)
    monkeypatch.setattr(queue_mod, "pool_embeddings", counted)
    real_taken = ProjectStore.taken_ids
    stolen: list[int] = []

    def taken_once(self, picks):
        picks = list(picks)
        if not stolen:                       # another round took the first pick meanwhile
            stolen.append(int(picks[0]))
            return {stolen[0]}
        return real_taken(self, picks)
    monkeypatch.setattr(ProjectStore, "taken_ids", taken_once)
    res = build_queue(workspace, "typiclust", top_k=3, record=True)
    assert len(loads) == 1
    assert stolen and stolen[0] not in res.image_ids and len(res.image_ids) == 3
