"""Masked loss, class weights, transforms, and small end-to-end training runs at 32-64 px."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch

from core.cli import main as cli_main
from data.errors import UserError
from data.schema import DEFAULT_SCHEMA, LabelSchema
from data.workspace import Workspace
from data.cache import ImageCache
from data.dataset import LabelledImageDataset, encode_targets, load_split
from data.preprocess import normalise_batch
from data.transforms import eval_transform, train_augmentations, train_transform
from models.checkpoint import load_model
from models.train import TrainConfig, class_weight_tensors, masked_loss, train

PALETTE = {"red": (200, 30, 30), "blue": (30, 40, 200), "white": (235, 235, 235),
           "black": (20, 20, 20)}
VIEWS = ("left", "right", "front", "back")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def draw(color: str, view: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A learnable toy crop: body colour = colour label, a dark marker placed by the view."""
    img = rng.integers(90, 140, (size, size, 3)).astype(np.uint8)
    q = size // 4
    img[q:3 * q, q // 2:size - q // 2] = PALETTE[color]
    box = {"left": (slice(q, 3 * q), slice(0, q)), "right": (slice(q, 3 * q), slice(size - q, size)),
           "front": (slice(0, q), slice(q, 3 * q)), "back": (slice(size - q, size), slice(q, 3 * q))}
    img[box[view]] = (255, 255, 0)
    return img


def add_images(ws: Workspace, n: int, *, split: str, seed: int = 0, partial: bool = False,
               label: bool = True) -> list[int]:
    """Generated images straight into the store + cache (the demo pool's job, done by hand)."""
    rng = np.random.default_rng(seed)
    size = ws.config.cache_size
    cache = ImageCache(ws.cache_dir, size)
    ids = []
    with ws.store() as store:
        for k in range(n):
            color, view = rng.choice(list(PALETTE)), rng.choice(VIEWS)
            img = draw(color, view, size, rng)
            row = cache.append(img)[0]
            sha = hashlib.sha256(img.tobytes() + f"{split}{seed}{k}".encode()).hexdigest()
            image_id, _ = store.add_image(path=f"gen/{split}_{seed}_{k}.png", name=f"{k}.png",
                                          sha256=sha, width=size, height=size, nbytes=0,
                                          split=split, cache_row=row)
            values = {"color": str(color), "orientation": str(view)}
            if partial and k % 3 == 0:
                values.pop("orientation")
            if label:
                store.add_label(image_id, values, source="simulated")
            ids.append(image_id)
    return ids


@pytest.fixture
def pool(tmp_path: Path) -> Workspace:
    from data.workspace import WorkspaceConfig
    ws = Workspace(tmp_path / "ws").init(WorkspaceConfig(cache_size=32))
    add_images(ws, 48, split="train", seed=1, partial=True)
    add_images(ws, 16, split="val", seed=2)
    add_images(ws, 16, split="test", seed=3)
    return ws


def tiny(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=16, image_size=32, pretrained=False, num_threads=1)
    base.update(kw)
    return TrainConfig(**base)


# -- loss -------------------------------------------------------------------------------------

def test_masked_loss_is_sum_of_per_head_means_over_present_labels() -> None:
    logits = {"a": torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),
              "b": torch.tensor([[0.0, 0.0, 3.0], [1.0, 2.0, 0.0], [0.5, 0.0, 0.0]])}
    targets = torch.tensor([[0, -1], [-1, 1], [1, 0]])

    def nll(row, k):  # hand-computed -log softmax
        return -(row[k] - math.log(sum(math.exp(v) for v in row)))

    head_a = (nll([2.0, 0.0], 0) + nll([1.0, 1.0], 1)) / 2      # rows 0 and 2 labelled
    head_b = (nll([1.0, 2.0, 0.0], 1) + nll([0.5, 0.0, 0.0], 0)) / 2  # rows 1 and 2
    total, per_head = masked_loss(logits, targets, ["a", "b"])
    assert per_head["a"] == pytest.approx(head_a, rel=1e-6)
    assert per_head["b"] == pytest.approx(head_b, rel=1e-6)
    assert float(total) == pytest.approx(head_a + head_b, rel=1e-6)


def test_head_without_labels_in_batch_contributes_zero_not_nan() -> None:
    logits = {"a": torch.randn(2, 3, requires_grad=True), "b": torch.randn(2, 2, requires_grad=True)}
    targets = torch.tensor([[1, -1], [2, -1]])
    total, per_head = masked_loss(logits, targets, ["a", "b"])
    assert per_head["b"] == 0.0 and math.isfinite(float(total.detach()))
    total.backward()
    assert logits["b"].grad is None or torch.count_nonzero(logits["b"].grad) == 0
    assert torch.count_nonzero(logits["a"].grad) > 0


def test_class_weights_are_inverse_frequency_of_present_classes() -> None:
    schema = LabelSchema(classes={"a": ("x", "y", "z")})
    targets = np.array([[0], [0], [0], [1], [-1]])
    w = class_weight_tensors(targets, schema)["a"].tolist()
    assert w == pytest.approx([4 / (2 * 3), 4 / (2 * 1), 1.0])


def test_encode_targets_marks_missing_and_unknown_as_minus_one() -> None:
    t = encode_targets([{"color": "blue", "orientation": "left"}, {"type": "bus"},
                        {"color": "teal"}], DEFAULT_SCHEMA)
    assert t.tolist() == [[4, -1, 2], [-1, 7, -1], [-1, -1, -1]]


# -- transforms --------------------------------------------------------------------------------

def test_eval_transform_matches_normalise_batch_exactly(rng) -> None:
    img = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    for size in (40, 32, 64):
        got = eval_transform(size)(img)
        want = normalise_batch(img[None], size)[0].transpose(1, 2, 0)
        assert got.dtype == np.float32 and np.array_equal(got, want)


def test_train_transform_is_seeded_sized_and_colour_safe(rng) -> None:
    img = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    a = [train_transform(32, seed=5)(image=img)["image"] for _ in range(2)]
    assert a[0].shape == (32, 32, 3) and a[0].dtype == np.float32
    assert np.array_equal(a[0], a[1])
    names = {type(t).__name__ for t in train_augmentations(32).transforms}
    for t in train_augmentations(32).transforms:
        if isinstance(t, A.OneOf):
            names |= {type(c).__name__ for c in t.transforms}
    assert {"Rotate", "Affine", "RandomBrightnessContrast", "GaussNoise", "ImageCompression",
            "RandomGamma", "Blur", "Resize"} <= names
    assert not names & {"HueSaturationValue", "ChannelShuffle", "RGBShift", "ColorJitter",
                        "ToGray", "HorizontalFlip"}


def test_train_transform_without_randomness_equals_eval_transform(rng) -> None:
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    pipe = train_transform(32)
    for t in pipe.transforms:
        if not isinstance(t, (A.Resize, A.Normalize)):
            t.p = 0.0
    np.testing.assert_allclose(pipe(image=img)["image"], eval_transform(32)(img), atol=1e-5)


# -- dataset ----------------------------------------------------------------------------------

def test_dataset_reads_cache_and_masks_partial_labels(pool: Workspace) -> None:
    with pool.store() as store:
        data = load_split(store, ImageCache(pool.cache_dir, 32), "train")
    ds = LabelledImageDataset(data, pool.schema, eval_transform(32))
    assert len(ds) == 48
    x, y = ds[0]
    assert tuple(x.shape) == (3, 32, 32) and x.dtype == torch.float32
    assert y.tolist()[1] == -1  # no type labels at all
    assert int((ds.targets[:, 2] == -1).sum()) == 16  # every third has no orientation


# -- end to end --------------------------------------------------------------------------------

def test_tiny_end_to_end_train_registers_current_model(pool: Workspace) -> None:
    events = []
    result = train(pool, tiny(), progress=events.append)
    assert result.status == "succeeded" and result.epochs_run == 2
    with pool.store() as store:
        current = store.current_model()
    assert current["id"] == result.model_id
    assert current["metrics"]["val"]["n"] == 16
    model, meta = load_model(pool)
    assert meta["image_size"] == 32 and meta["classes"]["color"][0] == "red"
    assert Path(meta["model_dir"], "train_log.json").is_file()
    steps = [e for e in events if e["phase"] == "step"]
    epochs = [e for e in events if e["phase"] == "epoch"]
    assert len(steps) == 2 * 3 and len(epochs) == 2
    assert set(steps[0]) >= {"epoch", "epochs", "step", "steps", "train_loss", "val_loss",
                             "val_acc", "images_per_s"}
    assert set(epochs[-1]["val_acc"]) == {"color", "type", "orientation"}
    assert epochs[-1]["val_acc"]["type"] is None  # no type labels: no accuracy, no crash
    assert all(math.isfinite(h["train_loss"]) for h in result.history)


def test_training_learns_the_toy_task(pool: Workspace) -> None:
    result = train(pool, tiny(epochs=6, lr=1e-3, batch_size=16, augment=False))
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < first["train_loss"]
    assert result.val_acc["color"] >= 0.5  # 4 colours: chance is 0.25


def test_same_seed_gives_same_run(pool: Workspace) -> None:
    a = train(pool, tiny(epochs=1, bf16=False))
    b = train(pool, tiny(epochs=1, bf16=False))
    assert a.history[0]["train_loss"] == pytest.approx(b.history[0]["train_loss"], rel=1e-5)
    assert a.best_val_loss == pytest.approx(b.best_val_loss, rel=1e-5)


def test_warm_start_continues_from_current_model(pool: Workspace) -> None:
    first = train(pool, tiny(epochs=1))
    add_images(pool, 16, split="train", seed=9)
    second = train(pool, tiny(epochs=6, warm_start=True))
    assert second.warm_started_from == first.model_id
    assert second.epochs_run == 2  # warm_epochs None -> epochs // 3
    assert "warm start" in second.origin
    with pool.store() as store:
        models = store.models()
    assert models[-1]["parent_id"] == first.model_id and models[-1]["is_current"]
    assert second.train_images == 64


def test_cancelled_training_keeps_previous_model(pool: Workspace) -> None:
    first = train(pool, tiny(epochs=1))
    before = sorted(p.name for p in pool.models_dir.iterdir())
    calls = {"n": 0}

    def cancel_on_third_poll() -> bool:
        calls["n"] += 1
        return calls["n"] >= 3

    result = train(pool, tiny(epochs=3), should_cancel=cancel_on_third_poll)
    assert result.cancelled and result.model_id is None
    with pool.store() as store:
        assert store.current_model()["id"] == first.model_id
        assert len(store.models()) == 1
    assert sorted(p.name for p in pool.models_dir.iterdir()) == before
    load_model(pool)  # the previous file is intact


def test_failed_training_keeps_previous_model(pool: Workspace) -> None:
    first = train(pool, tiny(epochs=1))

    def explode(info):
        if info["phase"] == "epoch":
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        train(pool, tiny(epochs=2), progress=explode)
    with pool.store() as store:
        assert [m["id"] for m in store.models()] == [first.model_id]
        assert store.current_model()["id"] == first.model_id
    assert len(list(pool.models_dir.iterdir())) == 1
    load_model(pool)


def test_balanced_training_reports_counts(pool: Workspace) -> None:
    result = train(pool, tiny(epochs=1, balance_orientation=True))
    before, after = result.balance["before"], result.balance["after"]
    assert after["left"] == after["right"] == max(before["left"], before["right"])
    assert after["front"] == before["front"] and after["back"] == before["back"]
    assert result.train_images == 48 + sum(result.balance["added"].values())


def test_no_labelled_training_images_is_a_user_error(tmp_path: Path) -> None:
    from data.workspace import WorkspaceConfig
    ws = Workspace(tmp_path / "empty").init(WorkspaceConfig(cache_size=32))
    add_images(ws, 4, split="train", label=False)
    with pytest.raises(UserError, match="no labelled training images"):
        train(ws, tiny())
    assert not list(ws.models_dir.iterdir())


def test_cli_train_then_evaluate(pool: Workspace, capsys) -> None:
    rc = cli_main(["--workspace", str(pool.root), "train", "--epochs", "1", "--image-size", "32",
                   "--batch-size", "16", "--no-pretrained", "--threads", "1",
                   "--balance-orientation"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "orientation before balancing" in out and "color" in out and "accuracy" in out
    rc = cli_main(["--workspace", str(pool.root), "evaluate", "--json"])
    assert rc == 0
    assert '"classes"' in capsys.readouterr().out


def test_cli_train_without_labels_exits_2(tmp_path: Path, capsys) -> None:
    from data.workspace import WorkspaceConfig
    ws = Workspace(tmp_path / "w").init(WorkspaceConfig(cache_size=32))
    rc = cli_main(["--workspace", str(ws.root), "train", "--epochs", "1", "--no-pretrained"])
    assert rc == 2
    assert "no labelled training images" in capsys.readouterr().err


def test_demo_pool_end_to_end_train_warm_start_and_evaluate(tmp_path: Path) -> None:
    """The real pipeline: demo pool -> round 0 -> simulated labels -> train -> evaluate -> warm."""
    from core.annotator import simulate_labels
    from data.sampling import sample_first_batch
    from data.workspace import WorkspaceConfig
    from data.demo import create_demo_pool
    from models.evaluate import evaluate

    ws = Workspace(tmp_path / "demo").init(WorkspaceConfig(cache_size=32))
    create_demo_pool(ws, 90, seed=0, size=32)
    with ws.store() as store:
        _, ids = sample_first_batch(store, 70, seed=0)
        simulate_labels(store, ws.schema, ids)
    first = train(ws, tiny(epochs=1, balance_orientation=True))
    assert first.status == "succeeded" and first.train_images >= 40
    report = evaluate(ws)
    assert report["model_id"] == first.model_id and report["n_images"] > 0
    assert report["heads"]["type"]["classes"] == list(DEFAULT_SCHEMA.classes["type"])
    with ws.store() as store:
        rest = [i for i in store.unlabelled_ids(exclude_splits=("test",))][:10]
        simulate_labels(store, ws.schema, rest)
    second = train(ws, tiny(epochs=3, warm_start=True))
    assert second.warm_started_from == first.model_id and second.epochs_run == 1
