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
from core.dashboard import learning_curve
from core.registry import load_model
from core.training import TrainingOutcome, train_and_promote
from data.dataset import SplitData
from data.progress import Progress
from models import train as model_train
from models.train import TrainConfig, class_weight_tensors, masked_loss

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


def train(ws: Workspace, config: TrainConfig, **kw) -> TrainingOutcome:
    """The project's training service (train, evaluate, promote) with a flat result for asserts."""
    return train_and_promote(ws, config, **kw)


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


def test_class_weights_equal_the_hand_formula_on_random_labels(rng) -> None:
    """sklearn's compute_class_weight gives the n / (K_present * n_c) the loss was tuned with."""
    schema = LabelSchema(classes={"a": tuple("pqrstu"), "b": ("x", "y")})
    targets = np.stack([rng.choice([-1, 0, 1, 1, 2, 2, 2, 4], 200),
                        rng.choice([-1, 1], 200)], axis=1)
    got = class_weight_tensors(targets, schema)
    for col, attr in enumerate(schema.attributes):
        t = targets[:, col]
        counts = np.bincount(t[t >= 0], minlength=schema.num_classes(attr)).astype(float)
        want = np.ones(schema.num_classes(attr))
        present = counts > 0
        want[present] = counts.sum() / (present.sum() * counts[present])
        np.testing.assert_allclose(got[attr].numpy(), want, rtol=1e-6)


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


# -- models.train: plain functions, no store ----------------------------------------------------

def test_models_train_works_on_arrays_and_a_folder_only(pool: Workspace, tmp_path: Path) -> None:
    """models.train.train needs splits in memory and an output folder: no workspace, no store."""
    with pool.store() as store:
        cache = ImageCache(pool.cache_dir, 32)
        tr, va = load_split(store, cache, "train"), load_split(store, cache, "val")
        n_models = len(store.models())
    events: list[Progress] = []
    result = model_train.train(SplitData(tr.image_ids, tr.images.copy(), tr.labels),
                               va, pool.schema, tmp_path / "run", tiny(), progress=events.append)
    assert result.status == "succeeded" and Path(result.path).is_file()
    assert (tmp_path / "run" / "train_log.json").is_file()
    with pool.store() as store:
        assert len(store.models()) == n_models  # nothing recorded by models/
    assert all(0.0 <= e.fraction <= 1.0 for e in events) and events[-1].fraction == 1.0


def test_train_one_epoch_and_evaluate_are_the_building_blocks(pool: Workspace) -> None:
    with pool.store() as store:
        cache = ImageCache(pool.cache_dir, 32)
        tr, va = load_split(store, cache, "train"), load_split(store, cache, "val")
    model_train.seed_everything(0)
    model, _ = model_train.build_model(pool.schema, pretrained=False)
    dataset, _ = model_train.make_dataset(tr, pool.schema, tiny(augment=False))
    loader = torch.utils.data.DataLoader(dataset, batch_size=16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = []
    stats = model_train.train_one_epoch(model, loader, opt, pool.schema.attributes,
                                        torch.device("cpu"),
                                        on_step=lambda *a: steps.append(a[0]))
    assert steps == [1, 2, 3] and stats.images == 48 and math.isfinite(stats.loss)
    loss, acc = model_train.evaluate(model, va, pool.schema, 32)
    assert math.isfinite(loss) and set(acc) == {"color", "type", "orientation"}
    with pytest.raises(model_train.TrainingCancelled):
        model_train.train_one_epoch(model, loader, opt, pool.schema.attributes,
                                    torch.device("cpu"), should_cancel=lambda: True)


# -- end to end (core.training: train, evaluate, promote) ------------------------------------------

def test_tiny_end_to_end_train_registers_current_model(pool: Workspace) -> None:
    events = []
    outcome = train(pool, tiny(), progress=events.append)
    result = outcome.train
    assert outcome.promoted and result.status == "succeeded" and result.epochs_run == 2
    with pool.store() as store:
        current = store.current_model()
    assert current["id"] == outcome.model_id
    assert current["metrics"]["val"]["n"] == 16
    assert current["metrics"]["test"]["n_images"] == 16  # evaluated before it was promoted
    model, meta = load_model(pool)
    assert meta["image_size"] == 32 and meta["classes"]["color"][0] == "red"
    assert Path(meta["model_dir"], "train_log.json").is_file()
    assert Path(meta["model_dir"], "metrics_test.json").is_file()
    steps = [e.details for e in events if e.details["phase"] == "step"]
    epochs = [e.details for e in events if e.details["phase"] == "epoch"]
    assert len(steps) == 2 * 3 and len(epochs) == 2
    assert set(steps[0]) >= {"epoch", "epochs", "step", "steps", "train_loss", "val_loss",
                             "val_acc", "images_per_s"}
    assert set(epochs[-1]["val_acc"]) == {"color", "type", "orientation"}
    assert epochs[-1]["val_acc"]["type"] is None  # no type labels: no accuracy, no crash
    assert all(math.isfinite(h["train_loss"]) for h in result.history)


def test_training_learns_the_toy_task(pool: Workspace) -> None:
    result = train(pool, tiny(epochs=6, lr=1e-3, batch_size=16, augment=False)).train
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < first["train_loss"]
    assert result.val_acc["color"] >= 0.5  # 4 colours: chance is 0.25


def test_same_seed_gives_same_run(pool: Workspace) -> None:
    a = train(pool, tiny(epochs=1, bf16=False)).train
    b = train(pool, tiny(epochs=1, bf16=False)).train
    assert a.history[0]["train_loss"] == pytest.approx(b.history[0]["train_loss"], rel=1e-5)
    assert a.best_val_loss == pytest.approx(b.best_val_loss, rel=1e-5)


def test_warm_start_continues_from_current_model(pool: Workspace) -> None:
    first = train(pool, tiny(epochs=1))
    add_images(pool, 16, split="train", seed=9)
    # forced: the promotion gate may refuse a tiny warm start that is worse by noise
    # (tests/test_guardrails.py); this test is about where the weights came from
    second = train(pool, tiny(epochs=6, warm_start=True), force_promote=True)
    assert second.warm_started_from == first.model_id
    assert second.train.epochs_run == 2  # warm_epochs None -> epochs // 3
    assert "warm start" in second.train.origin
    with pool.store() as store:
        models = store.models()
    assert models[-1]["parent_id"] == first.model_id and models[-1]["is_current"]
    assert second.train.train_images == 64


def _snapshot(ws: Workspace) -> tuple[list[int], int | None, list[str]]:
    with ws.store() as store:
        current = store.current_model()
        return ([m["id"] for m in store.models()], current and current["id"],
                sorted(p.name for p in ws.models_dir.iterdir()))


def test_cancelled_training_keeps_previous_model(pool: Workspace) -> None:
    first = train(pool, tiny(epochs=1))
    before = _snapshot(pool)
    calls = {"n": 0}

    def cancel_on_third_poll() -> bool:
        calls["n"] += 1
        return calls["n"] >= 3

    outcome = train(pool, tiny(epochs=3), should_cancel=cancel_on_third_poll)
    assert outcome.cancelled and outcome.model_id is None
    assert _snapshot(pool) == before and before[1] == first.model_id
    load_model(pool)  # the previous file is intact


def test_cancel_after_training_and_evaluation_does_not_promote(pool: Workspace) -> None:
    """Defect 1: a cancel that arrives once the epochs are done must still win."""
    first = train(pool, tiny(epochs=1))
    before = _snapshot(pool)
    polls = {"n": 0}

    def cancel_after_last_step() -> bool:  # 3 steps x 2 epochs, then the final check
        polls["n"] += 1
        return polls["n"] > 6

    outcome = train(pool, tiny(epochs=2), should_cancel=cancel_after_last_step)
    assert outcome.cancelled and polls["n"] == 7
    assert _snapshot(pool) == before and before[1] == first.model_id


def test_failed_evaluation_does_not_promote(pool: Workspace, monkeypatch) -> None:
    """Defect 1: promotion comes after the test evaluation; a failing one records nothing."""
    first = train(pool, tiny(epochs=1))
    before = _snapshot(pool)

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr("core.training.evaluate_split", broken)
    with pytest.raises(RuntimeError, match="evaluation broke"):
        train(pool, tiny(epochs=1))
    assert _snapshot(pool) == before and before[1] == first.model_id


def test_no_labelled_test_images_promotes_and_says_not_evaluated(tmp_path: Path) -> None:
    from data.workspace import WorkspaceConfig
    ws = Workspace(tmp_path / "nt").init(WorkspaceConfig(cache_size=32))
    add_images(ws, 32, split="train", seed=1)
    add_images(ws, 8, split="test", seed=3, label=False)
    outcome = train(ws, tiny(epochs=1))
    assert outcome.promoted and outcome.evaluation is None
    assert "no labelled test images" in outcome.evaluation_skipped
    with ws.store() as store:
        assert store.current_model()["id"] == outcome.model_id


def test_failed_training_keeps_previous_model(pool: Workspace) -> None:
    first = train(pool, tiny(epochs=1))

    def explode(p: Progress):
        if p.details["phase"] == "epoch":
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        train(pool, tiny(epochs=2), progress=explode)
    with pool.store() as store:
        assert [m["id"] for m in store.models()] == [first.model_id]
        assert store.current_model()["id"] == first.model_id
    assert len(list(pool.models_dir.iterdir())) == 1
    load_model(pool)


def test_balanced_training_reports_counts(pool: Workspace) -> None:
    result = train(pool, tiny(epochs=1, balance_orientation=True)).train
    before, after = result.balance["before"], result.balance["after"]
    assert after["left"] == after["right"] == max(before["left"], before["right"])
    assert after["front"] == before["front"] and after["back"] == before["back"]
    assert result.train_images == 48
    assert result.train_examples == 48 + sum(result.balance["added"].values())


def test_learning_curve_counts_labelled_images_not_flip_copies(pool: Workspace) -> None:
    """Defect 4: flip-balancing copies are training examples, not labelled images."""
    with pool.store() as store:  # make "left" outnumber "right" so balancing adds copies
        for image_id in sorted(store.current_labels(split="train"))[:12]:
            store.add_label(image_id, {"color": "red", "orientation": "left"}, source="simulated")
    outcome = train(pool, tiny(epochs=1, balance_orientation=True))
    assert sum(outcome.train.balance["added"].values()) > 0
    with pool.store() as store:
        model = store.current_model()
        curve = learning_curve(store)
    assert model["metrics"]["train"]["n"] == 48
    assert {row["labels"] for row in curve} == {48}


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


def test_cli_evaluate_prints_per_class_metrics_and_majority_baseline(pool: Workspace,
                                                                     capsys) -> None:
    """Defect 9: a terminal user sees per-class precision/recall/F1 by name and the baseline."""
    train(pool, tiny(epochs=1))
    capsys.readouterr()
    assert cli_main(["--workspace", str(pool.root), "evaluate"]) == 0
    out = capsys.readouterr().out
    with pool.store() as store:
        test = load_split(store, ImageCache(pool.cache_dir, 32), "test")
    colors = [lab["color"] for lab in test.labels]
    majority = max(pool.schema.classes["color"], key=colors.count)  # ties: first class, as argmax
    assert "precision" in out and "recall" in out and "F1" in out
    for name in set(colors):  # every colour in the test split has its own row, by name
        assert any(line.split()[:1] == [name] for line in out.splitlines())
    assert f"majority-class baseline (always {majority!r}): accuracy " \
           f"{colors.count(majority) / len(colors):.3f}" in out


def test_cli_train_without_labels_exits_2(tmp_path: Path, capsys) -> None:
    from data.workspace import WorkspaceConfig
    ws = Workspace(tmp_path / "w").init(WorkspaceConfig(cache_size=32))
    rc = cli_main(["--workspace", str(ws.root), "train", "--epochs", "1", "--no-pretrained"])
    assert rc == 2
    assert "no labelled training images" in capsys.readouterr().err


def test_demo_pool_end_to_end_train_warm_start_and_evaluate(tmp_path: Path) -> None:
    """The real pipeline: demo pool -> round 0 -> simulated labels -> train -> evaluate -> warm."""
    from core.annotator import simulate_labels
    from core.rounds import sample_first_batch
    from data.workspace import WorkspaceConfig
    from data.demo import create_demo_pool
    from core.training import evaluate_and_record

    ws = Workspace(tmp_path / "demo").init(WorkspaceConfig(cache_size=32))
    create_demo_pool(ws, 90, seed=0, size=32)
    with ws.store() as store:
        _, ids = sample_first_batch(store, 70, seed=0)
        simulate_labels(store, ws.schema, ids)
    first = train(ws, tiny(epochs=1, balance_orientation=True))
    assert first.promoted and first.train.train_images >= 40
    report = evaluate_and_record(ws)
    assert report.model_id == first.model_id and report.n_images > 0
    assert report.heads["type"]["classes"] == list(DEFAULT_SCHEMA.classes["type"])
    with ws.store() as store:
        rest = [i for i in store.unlabelled_ids(exclude_splits=("test",))][:10]
        simulate_labels(store, ws.schema, rest)
    second = train(ws, tiny(epochs=3, warm_start=True))
    assert second.warm_started_from == first.model_id and second.train.epochs_run == 1
