"""Mirror views in the fast loop: heads fitted on each labelled image and its left-right mirror,
predicting the mean of both views (models.heads), the mirrored pool embeddings cache
(core.embeddings) and the refit that uses both (core.refit)."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch import nn

import core.embeddings as embeddings_mod
from core.embeddings import cache_path, pool_embeddings
from core.refit import refit_and_rerank
from core.refit_status import last_refit, refit_scores
from data.balance import mirror_maps
from data.cache import ImageCache
from data.schema import DEFAULT_SCHEMA
from data.workspace import Workspace, WorkspaceConfig
from models.backbones import Backbone, WeightsOrigin
from models.heads import fit_heads

ORIENT = list(DEFAULT_SCHEMA.classes["orientation"])
COLOR = list(DEFAULT_SCHEMA.classes["color"])
MIRROR = mirror_maps(DEFAULT_SCHEMA)


def test_mirror_maps_swap_the_sides_and_leave_colour_and_type_alone():
    assert set(MIRROR) == {"orientation"}
    m = MIRROR["orientation"]
    assert m["left"] == "right" and m["right"] == "left"
    assert m["front-left"] == "front-right" and m["back-right"] == "back-left"
    assert m["front"] == "front" and m["back"] == "back"
    assert sorted(m) == sorted(ORIENT)


def _facing(rng: np.random.Generator, sides: list[str], n: int):
    """4-d embeddings: feature 0 is +1 facing left, -1 facing right; feature 1 is +1 front,
    -1 back; a mirror negates feature 0 (so the mirror view of an image is known exactly)."""
    side = {"left": (1, 0), "right": (-1, 0), "front": (0, 1), "back": (0, -1)}
    names = [sides[i % len(sides)] for i in range(n)]
    x = rng.normal(0, 0.1, (n, 4)).astype(np.float32)
    x[:, :2] += np.array([side[s] for s in names], np.float32)
    flipped = x.copy()
    flipped[:, 0] *= -1
    return x, flipped, names


def test_mirror_views_teach_the_side_that_no_label_shows(rng):
    """Only left, front and back are labelled: a plain head can never say "right"; with
    mirror views every labelled left car is also a right car, so right-facing cars come out
    right. Colour (not labelled here) is untouched, the orientation head still masks it."""
    x, xf, names = _facing(rng, ["left", "front", "back"], 90)
    labels = [{"orientation": s} for s in names]
    classes = {"orientation": ORIENT, "color": COLOR}
    plain = fit_heads(x, labels, classes)
    mirror = fit_heads(x, labels, classes, mirrored=xf, mirror_map=MIRROR)
    assert mirror.mirrored and not plain.mirrored
    assert mirror.n_train() == {"orientation": 90, "color": 0}     # rows, not views
    assert not mirror.heads["color"].fitted

    test, test_flipped, truth = _facing(rng, ["right", "left", "front", "back"], 40)
    p_plain = plain.predict_proba(test)["orientation"]
    p_mirror = mirror.predict_proba(test, test_flipped)["orientation"]
    right = ORIENT.index("right")
    assert p_plain[:, right].max() == 0.0                          # an unseen class
    pred = [ORIENT[k] for k in p_mirror.argmax(axis=1)]
    assert pred == truth
    np.testing.assert_allclose(p_mirror.sum(axis=1), 1.0, atol=1e-5)


def test_swapping_the_views_mirrors_the_prediction(rng):
    """Equivariance by construction: p(mirror image)[k] == p(image)[mirror of k]."""
    x, xf, names = _facing(rng, ["left", "right", "front", "back"], 80)
    colours = [COLOR[i % 3] for i in range(80)]
    x[:, 2] += np.array([i % 3 for i in range(80)], np.float32)   # colour survives a mirror
    xf[:, 2] = x[:, 2]
    labels = [{"orientation": s, "color": c} for s, c in zip(names, colours)]
    fit = fit_heads(x, labels, {"orientation": ORIENT, "color": COLOR}, mirrored=xf,
                    mirror_map=MIRROR)
    a = fit.predict_proba(x[:20], xf[:20])
    b = fit.predict_proba(xf[:20], x[:20])
    perm = [ORIENT.index(MIRROR["orientation"][c]) for c in ORIENT]
    np.testing.assert_allclose(b["orientation"], a["orientation"][:, perm], atol=1e-6)
    np.testing.assert_allclose(b["color"], a["color"], atol=1e-6)
    # without the mirror views the same heads predict the plain view alone
    np.testing.assert_allclose(fit.predict_proba(x[:20])["color"],
                               fit.heads["color"].predict_proba(x[:20]), atol=1e-6)


def test_mirror_views_of_another_shape_are_refused(rng):
    x, xf, names = _facing(rng, ["left", "front"], 20)
    labels = [{"orientation": s} for s in names]
    with pytest.raises(ValueError, match="mirror views"):
        fit_heads(x, labels, {"orientation": ORIENT}, mirrored=xf[:10], mirror_map=MIRROR)
    fit = fit_heads(x, labels, {"orientation": ORIENT}, mirrored=xf, mirror_map=MIRROR)
    with pytest.raises(ValueError, match="mirror views"):
        fit.predict_proba(x, xf[:5])


# -- the cache and the refit, with a backbone that can tell left from right ----------------------
class _Halves(nn.Module):
    """Mean colour of the left half, then of the right half: 6 features that a mirror swaps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1] // 2
        return torch.cat([x[..., :w].mean(dim=(2, 3)), x[..., w:].mean(dim=(2, 3))], dim=1)


class _Loader:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, name: str, **_: object) -> Backbone:
        self.calls += 1
        return Backbone(name, _Halves(), 6, WeightsOrigin(name, "imagenet", "ImageNet (test)"))


@pytest.fixture
def halves(monkeypatch):
    fake = _Loader()
    monkeypatch.setattr(embeddings_mod, "load_backbone", fake)
    return fake


def _add(ws, kinds: list[str], start: int = 0) -> list[int]:
    """'left' = red on the left half, 'right' = red on the right, 'front' = green all over
    (a car's nose, say, points at the red side)."""
    size = ws.config.cache_size
    imgs = np.zeros((len(kinds), size, size, 3), np.uint8)
    for i, kind in enumerate(kinds):
        shade = 150 + (start + i) % 40
        if kind == "front":
            imgs[i, :, :, 1] = shade
        else:
            red = slice(0, size // 2) if kind == "left" else slice(size // 2, size)
            imgs[i, :, red, 0] = shade
    rows = ImageCache(ws.cache_dir, size).append(imgs)
    ids = []
    with ws.store() as store:
        for i, (row, img) in enumerate(zip(rows, imgs)):
            n = start + i
            image_id, _ = store.add_image(
                path=f"pool/m{n:04d}.png", name=f"m{n:04d}.png",
                sha256=hashlib.sha256(img.tobytes() + n.to_bytes(4, "big")).hexdigest(),
                width=size, height=size, nbytes=img.nbytes, split="train", cache_row=row)
            ids.append(image_id)
    return ids


def test_mirrored_pool_embeddings_are_cached_beside_the_plain_ones(tmp_path, halves):
    ws = Workspace(tmp_path / "ws").init(WorkspaceConfig(cache_size=16))
    _add(ws, ["left", "right", "front"])
    plain = pool_embeddings(ws, "resnet18")
    mirrored = pool_embeddings(ws, "resnet18", mirrored=True)
    assert mirrored.mirrored and not plain.mirrored and mirrored.computed == 3
    # a mirror swaps the two halves' features
    np.testing.assert_allclose(mirrored.vectors[:, :3], plain.vectors[:, 3:], atol=1e-6)
    np.testing.assert_allclose(mirrored.vectors[:, 3:], plain.vectors[:, :3], atol=1e-6)
    assert cache_path(ws, "resnet18", "imagenet", 16).is_file()
    assert cache_path(ws, "resnet18", "imagenet", 16, mirrored=True).is_file()
    again = pool_embeddings(ws, "resnet18", mirrored=True)
    assert again.computed == 0 and again.mirrored
    assert pool_embeddings(ws, "resnet18").computed == 0      # the plain cache is untouched
    np.testing.assert_array_equal(pool_embeddings(ws, "resnet18").vectors, plain.vectors)


def _label(ws, ids, values):
    with ws.store() as store:
        for image_id, value in zip(ids, values):
            store.add_label(image_id, {"orientation": value}, source="builtin")


def test_refit_with_mirror_views_ranks_right_facing_cars_that_no_label_shows(tmp_path, halves):
    """End to end through the workspace: left and front cars labelled, right ones not. The
    refit's pool predictions call the right-facing cars "right" only with mirror views."""
    ws = Workspace(tmp_path / "ws").init(WorkspaceConfig(cache_size=16))
    labelled = _add(ws, ["left", "front"] * 10)
    _label(ws, labelled, ["left", "front"] * 10)
    pool = _add(ws, ["right", "left", "front"] * 4, start=100)

    plain = refit_and_rerank(ws, mirror=False)
    assert not plain.mirror
    right = ORIENT.index("right")
    p = refit_scores(ws).probs["orientation"]
    assert p[:, right].max() == 0.0

    record = refit_and_rerank(ws)                      # mirror views are the default
    assert record.mirror and last_refit(ws).mirror
    scores = refit_scores(ws)
    pred = {int(i): ORIENT[k] for i, k in zip(scores.image_ids,
                                             scores.probs["orientation"].argmax(axis=1))}
    assert [pred[i] for i in pool] == ["right", "left", "front"] * 4
    assert cache_path(ws, "resnet18" if "efficientnet_lite0" not in embeddings_mod.BACKBONES
                      else "efficientnet_lite0", "imagenet", 16, mirrored=True).is_file()


# -- the network's mirror views (fine-tuned models, their checkpoints and ONNX exports) ------------
def _mirror_net(seed: int = 0):
    from data.balance import mirror_permutations
    from models.network import MultiHeadNet

    torch.manual_seed(seed)
    return MultiHeadNet(DEFAULT_SCHEMA, mirror_perms=mirror_permutations(DEFAULT_SCHEMA)).eval()


def test_a_network_with_mirror_views_predicts_mirrored_images_mirrored():
    net = _mirror_net()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        plain, emb = net.forward_with_embedding(x)
        flipped = net(torch.flip(x, dims=[3]))
    perm = net.mirror_perms["orientation"]
    assert perm[ORIENT.index("left")] == ORIENT.index("right")
    torch.testing.assert_close(flipped["orientation"], plain["orientation"][:, perm])
    torch.testing.assert_close(flipped["color"], plain["color"])
    torch.testing.assert_close(torch.softmax(plain["type"], 1).sum(1), torch.ones(3))
    assert emb.shape == (3, net.feature_dim)                  # the plain view's embedding
    net.set_mirror_views(None)                                # off: the plain view alone
    with torch.no_grad():
        assert not torch.allclose(net(torch.flip(x, dims=[3]))["orientation"],
                                  net(x)["orientation"][:, perm])
    with pytest.raises(ValueError, match="not a permutation"):
        net.set_mirror_views({"orientation": [0] * len(ORIENT)})


def test_mirror_views_survive_the_checkpoint_and_the_onnx_export(tmp_path):
    from models.checkpoint import load_checkpoint, model_meta, save_checkpoint
    from models.export import publish_onnx
    from models.onnx_runtime import OnnxClassifier

    net = _mirror_net(1)
    path = save_checkpoint(tmp_path / "model.pt", net, model_meta(DEFAULT_SCHEMA, 32))
    back, _ = load_checkpoint(path)
    assert back.mirror_perms == net.mirror_perms
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back(x)["orientation"], net(x)["orientation"])
    images = (np.random.default_rng(0).random((4, 32, 32, 3)) * 255).astype(np.uint8)
    onnx_path, report = publish_onnx(back, tmp_path / "export", images, 32)
    assert report.passed, report.summary()
    probs, _ = OnnxClassifier(onnx_path).predict(images)
    mirrored, _ = OnnxClassifier(onnx_path).predict(np.ascontiguousarray(images[:, :, ::-1]))
    perm = net.mirror_perms["orientation"]
    np.testing.assert_allclose(mirrored["orientation"], probs["orientation"][:, perm], atol=1e-4)


def test_training_with_mirror_views_draws_mirrored_images_with_mirrored_labels():
    from data.dataset import LabelledImageDataset, SplitData

    img = np.zeros((1, 8, 8, 3), np.uint8)
    img[0, :, :4, 0] = 255                                    # red on the left
    data = SplitData([1], img, [{"orientation": "left", "color": "red"}])
    always = LabelledImageDataset(data, DEFAULT_SCHEMA, lambda im: im.astype(np.float32),
                                  mirror_prob=1.0)
    never = LabelledImageDataset(data, DEFAULT_SCHEMA, lambda im: im.astype(np.float32))
    x_m, t_m = always[0]
    x_p, t_p = never[0]
    attrs = list(DEFAULT_SCHEMA.attributes)
    assert ORIENT[int(t_m[attrs.index("orientation")])] == "right"
    assert ORIENT[int(t_p[attrs.index("orientation")])] == "left"
    assert int(t_m[attrs.index("color")]) == int(t_p[attrs.index("color")])
    torch.testing.assert_close(x_m, torch.flip(x_p, dims=[2]))
    half = LabelledImageDataset(data, DEFAULT_SCHEMA, lambda im: im.astype(np.float32),
                                mirror_prob=0.5, seed=3)
    sides = {ORIENT[int(half[0][1][attrs.index("orientation")])] for _ in range(40)}
    assert sides == {"left", "right"}


def test_a_mirror_probe_answers_as_the_mirror_head_refit_would(tmp_path):
    """LP-FT with mirror views: the probed network (two views averaged) predicts what
    models.heads' mirror-aware refit predicts on the same frozen features."""
    from data.balance import mirror_permutations
    from data.dataset import SplitData
    from models.backbones import build_architecture
    from models.embed import embed_images
    from models.evaluate import predict_arrays
    from models.network import MultiHeadNet
    from models.train import TrainConfig, probe_heads, train

    torch.manual_seed(0)
    size = 32
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(24):                                     # red half on the left: "left"
        img = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
        img[:, : size // 2, 0] = 200 + i
        images.append(img)
        labels.append({"orientation": "left" if i % 2 else "front-left"})
    data = SplitData(list(range(24)), np.stack(images), labels)
    net = MultiHeadNet(DEFAULT_SCHEMA, backbone=Backbone(
        "resnet18", build_architecture("resnet18"), 512,
        WeightsOrigin("resnet18", "imagenet-file", "test stand-in")),
        mirror_perms=mirror_permutations(DEFAULT_SCHEMA))
    probe_heads(net, data, DEFAULT_SCHEMA, size, mirror=True)
    feats = embed_images(net.backbone, data.images, size)
    flipped = embed_images(net.backbone, np.ascontiguousarray(data.images[:, :, ::-1]), size)
    refit = fit_heads(feats, labels, DEFAULT_SCHEMA.classes, reference=feats, mirrored=flipped,
                      mirror_map=MIRROR)
    got = predict_arrays(net.eval(), data.images, size, 64).probs["orientation"]
    want = refit.predict_proba(feats, flipped)["orientation"]
    assert np.abs(got - want).max() < 1e-3
    # and a short training run keeps mirror views in the saved model
    config = TrainConfig(epochs=1, image_size=size, pretrained=False, batch_size=8,
                         augment=False, mirror_views=True)
    result = train(data, data, DEFAULT_SCHEMA, tmp_path / "run", config)
    assert result.status == "succeeded"
    from models.checkpoint import load_checkpoint
    model, meta = load_checkpoint(tmp_path / "run" / "model.pt")
    assert model.mirror_perms == mirror_permutations(DEFAULT_SCHEMA)
    assert meta["params"]["mirror_views"] is True
