"""Demo generator (classes, frequencies, reproducibility, mirror consistency, learnability)
and the simulated annotator."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.annotator import simulate_labels
from data.schema import DEFAULT_CLASSES, DEFAULT_SCHEMA
from data.workspace import Workspace
from data.demo import (AZIMUTH, BODIES, PAINT, _body_faces, _camera, _render_vehicle,
                       class_counts, create_demo_pool, generate_demo_images, render_vehicle,
                       sample_labels)


def test_every_class_has_a_look() -> None:
    assert set(PAINT) == set(DEFAULT_CLASSES["color"])
    assert set(BODIES) == set(DEFAULT_CLASSES["type"])
    assert set(AZIMUTH) == set(DEFAULT_CLASSES["orientation"])


def test_generated_files_and_ground_truth(tmp_path: Path) -> None:
    truth = generate_demo_images(tmp_path / "a", 24, seed=5, size=40)
    assert len(truth) == 24
    for name, label in truth.items():
        assert set(label) == {"color", "type", "orientation"}
        assert all(label[a] in DEFAULT_CLASSES[a] for a in label)
        with Image.open(tmp_path / "a" / name) as im:
            assert im.format == "JPEG" and im.size == (40, 40) and im.mode == "RGB"
    again = generate_demo_images(tmp_path / "b", 24, seed=5, size=40)
    assert again == truth
    assert all((tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in truth)
    other = generate_demo_images(tmp_path / "c", 24, seed=6, size=40)
    assert any((tmp_path / "a" / n).read_bytes() != (tmp_path / "c" / n).read_bytes() for n in other)


def test_default_frequencies_are_street_like() -> None:
    labels = sample_labels(1000, seed=0)
    colors = Counter(l["color"] for l in labels)
    types = Counter(l["type"] for l in labels)
    assert colors["black"] + colors["white"] + colors["gray"] > 600
    assert colors["purple"] < 40 and colors["orange"] < 40 and colors["purple"] > 0
    assert types["sedan"] + types["suv"] > 500 and 0 < types["bus"] < 60
    assert sum(1 for l in labels if l["color"] == "purple" and l["type"] == "van") < 10
    for attr in DEFAULT_CLASSES:                       # every class shows up in a big pool
        assert set(Counter(l[attr] for l in labels)) == set(DEFAULT_CLASSES[attr])


def test_configurable_frequencies() -> None:
    labels = sample_labels(100, seed=1, frequencies={"type": {"bus": 1, "van": 3},
                                                     "color": {"red": 1}})
    types = Counter(l["type"] for l in labels)
    assert types == {"van": 75, "bus": 25}               # exact quotas, not a coin toss
    assert {l["color"] for l in labels} == {"red"}
    assert len({l["orientation"] for l in labels}) == 8  # untouched attribute keeps defaults
    with pytest.raises(ValueError, match="unknown"):
        sample_labels(10, frequencies={"color": {"teal": 1}})
    with pytest.raises(ValueError):
        sample_labels(10, frequencies={"color": {"red": 0}})


def test_orientation_azimuths_follow_the_flip_map() -> None:
    for name, az in AZIMUTH.items():
        flipped = DEFAULT_SCHEMA.flip_value(name)
        assert (AZIMUTH[flipped] + az) % 360 == 0


@pytest.mark.parametrize("kind", ["sedan", "pickup", "bus"])
@pytest.mark.parametrize("azimuth", [90.0, 45.0, 135.0])
def test_mirrored_view_is_the_flipped_image(kind: str, azimuth: float) -> None:
    """Rendering at -azimuth with a mirrored light gives the left-right flipped picture."""
    faces = _body_faces(BODIES[kind], (150, 40, 40))
    light = np.array([0.3, 0.5, 0.8])
    light /= np.linalg.norm(light)
    views = []
    for az, lt in ((azimuth, light), (-azimuth, light * np.array([1, -1, 1]))):
        c, r, u = _camera(az, 12.0)
        rgb, alpha, _ = _render_vehicle(faces, 96, c, r, u, lt, 0.6, 0.4, 0.9, (0.0, 0.0), 0.2)
        views.append((rgb, alpha))
    (rgb_a, alpha_a), (rgb_b, alpha_b) = views
    assert alpha_a.sum() > 0.2 * 96 * 96
    assert np.abs(alpha_a[:, ::-1] - alpha_b).mean() < 0.02
    assert np.abs(rgb_a[:, ::-1] - rgb_b).mean() < 4.0
    # and it is not symmetric by accident: the front points the other way
    assert np.abs(rgb_a - rgb_b).mean() > 4 * np.abs(rgb_a[:, ::-1] - rgb_b).mean()


def _colour_features(img: np.ndarray) -> np.ndarray:
    """Mean and median colour of the crop's centre (where the paint is)."""
    f = img.astype(np.float32) / 255.0
    h = f.shape[0]
    centre = f[h // 4: 3 * h // 4, h // 4: 3 * h // 4].reshape(-1, 3)
    return np.concatenate([centre.mean(0), np.median(centre, 0)])


def _shape_features(img: np.ndarray) -> np.ndarray:
    """A small histogram of oriented gradients on 4x4 and 8x8 grids (silhouette and layout)."""
    gray = img.astype(np.float32).mean(2)
    gy, gx = np.gradient(gray)
    mag = np.hypot(gx, gy)
    bins = np.minimum(((np.arctan2(gy, gx) % np.pi) / np.pi * 8).astype(int), 7)
    out = []
    for cells in (4, 8):
        step = img.shape[0] // cells
        hist = np.zeros((cells, cells, 8), np.float32)
        for i in range(cells):
            for j in range(cells):
                win = (slice(i * step, (i + 1) * step), slice(j * step, (j + 1) * step))
                hist[i, j] = np.bincount(bins[win].ravel(), mag[win].ravel(), 8)
        out.append(hist.ravel() / (np.linalg.norm(hist) + 1e-6))
    return np.concatenate(out)


def test_classes_are_learnable_at_64px() -> None:
    """Linear models on crude features beat chance by a wide margin on every attribute
    (a small CNN does much better; this only proves the classes are visibly different)."""
    from sklearn.linear_model import LogisticRegression

    uniform = {a: {c: 1.0 for c in cs} for a, cs in DEFAULT_CLASSES.items()}
    labels = sample_labels(240, seed=3, frequencies=uniform)
    imgs = [render_vehicle(l, size=64, rng=np.random.default_rng([3, i])) for i, l in enumerate(labels)]
    colour = np.stack([_colour_features(i) for i in imgs])
    shape = np.stack([_shape_features(i) for i in imgs])
    train, test = slice(0, 180), slice(180, 240)
    accuracy = {}
    for attr, x in (("color", colour), ("type", shape), ("orientation", shape)):
        y = np.array([l[attr] for l in labels])
        model = LogisticRegression(max_iter=3000, C=4.0).fit(x[train], y[train])
        accuracy[attr] = float((model.predict(x[test]) == y[test]).mean())
    chance = {a: 1.0 / len(c) for a, c in DEFAULT_CLASSES.items()}
    assert accuracy["color"] > 4 * chance["color"], accuracy
    assert accuracy["type"] > 2 * chance["type"], accuracy
    assert accuracy["orientation"] > 4 * chance["orientation"], accuracy


def test_white_is_brighter_than_black_and_red_is_red() -> None:
    def mean_centre(color: str) -> np.ndarray:
        out = []
        for i in range(12):
            label = {"color": color, "type": "sedan", "orientation": "left"}
            img = render_vehicle(label, size=48, rng=np.random.default_rng([9, i]))
            out.append(img[18:30, 12:36].reshape(-1, 3).mean(0))
        return np.mean(out, axis=0)
    white, black, red = mean_centre("white"), mean_centre("black"), mean_centre("red")
    assert white.mean() > black.mean() + 60
    assert red[0] > red[1] + 40 and red[0] > red[2] + 40


# -- demo pool in a workspace ----------------------------------------------------------------
def test_create_demo_pool_is_reusable(workspace: Workspace) -> None:
    steps: list[tuple[int, int]] = []
    report = create_demo_pool(workspace, 30, seed=2, size=32,
                              progress=lambda p: steps.append((p.done, p.total)))
    assert report.added == 30 and report.ground_truth == 30 and not report.rejects
    assert steps[-1] == (30, 30)       # each stage counts the pool once (tests/test_progress.py)
    with workspace.store() as store:
        truth = store.ground_truth()
        assert len(truth) == 30
        assert all(set(v) == {"color", "type", "orientation"} for v in truth.values())
        names = {i.name: i.id for i in store.images()}
    folder = workspace.pools_dir / "demo-2"
    assert folder.is_dir() and (folder / ".demo.json").is_file()
    again = create_demo_pool(workspace, 30, seed=2, size=32)
    assert again.added == 0 and again.already_known == 30
    bigger = create_demo_pool(workspace, 40, seed=2, size=32)      # other params, own folder
    assert bigger.files == 40
    assert len([p for p in workspace.pools_dir.iterdir() if p.name.startswith("demo-2")]) == 2
    assert class_counts(truth)["color"]
    assert len(names) == 30


# -- simulated annotator ---------------------------------------------------------------------
def _pool_with_truth(workspace: Workspace, n: int = 20) -> list[int]:
    create_demo_pool(workspace, n, seed=4, size=32)
    with workspace.store() as store:
        return [i.id for i in store.images()]


def test_simulated_labels_follow_ground_truth(workspace: Workspace) -> None:
    ids = _pool_with_truth(workspace)
    with workspace.store() as store:
        number = store.create_round(ids[:10], kind="seed", strategy="random")
        round_id = store.round(number)["id"]
        added = simulate_labels(store, DEFAULT_SCHEMA, ids[:10], round_id=round_id)
        assert added == 10
        truth = store.ground_truth()
        for i in ids[:10]:
            label = store.current_label(i)
            assert label.values == truth[i]
            assert (label.source, label.annotator, label.round_id) == ("simulated", "simulator", round_id)
        assert store.current_label(ids[10]) is None
        assert simulate_labels(store, DEFAULT_SCHEMA, ids[:10]) == 0    # idempotent


def test_error_rate_and_partial_truth(workspace: Workspace) -> None:
    ids = _pool_with_truth(workspace)
    with workspace.store() as store:
        truth = store.ground_truth()
        assert simulate_labels(store, DEFAULT_SCHEMA, ids, error_rate=1.0, seed=1) == len(ids)
        for i in ids:
            values = store.current_label(i).values
            assert all(values[a] != truth[i][a] for a in truth[i])     # every answer wrong
            assert all(values[a] in DEFAULT_CLASSES[a] for a in values)
        store.set_ground_truth(ids[0], {"color": "red"})                # partial ground truth
        store.conn.execute("DELETE FROM ground_truth WHERE image_id=?", (ids[1],))
        added = simulate_labels(store, DEFAULT_SCHEMA, ids[:2])
        assert added == 1
        assert store.current_label(ids[0]).values == {"color": "red"}
        assert len(store.label_history(ids[0])) == 2                     # history kept
    with pytest.raises(ValueError):
        with workspace.store() as store:
            simulate_labels(store, DEFAULT_SCHEMA, ids, error_rate=1.5)


def test_error_rate_is_roughly_respected(workspace: Workspace) -> None:
    ids = _pool_with_truth(workspace, 60)
    with workspace.store() as store:
        truth = store.ground_truth()
        simulate_labels(store, DEFAULT_SCHEMA, ids, error_rate=0.2, seed=0)
        wrong = sum(store.current_label(i).values[a] != truth[i][a] for i in ids for a in truth[i])
        assert 0.08 < wrong / (3 * len(ids)) < 0.35
