"""Orientation balancing by horizontal flip: label swap, mirrored pixels, before/after counts."""
from __future__ import annotations

import numpy as np
import pytest

from data.schema import DEFAULT_SCHEMA, LabelSchema
from data.balance import (class_counts, flip_image, flip_label, mirror_pairs,
                          plan_orientation_balance)
from data.dataset import LabelledImageDataset, SplitData


@pytest.mark.parametrize("value, flipped", [
    ("left", "right"), ("right", "left"),
    ("front-left", "front-right"), ("front-right", "front-left"),
    ("back-left", "back-right"), ("back-right", "back-left"),
    ("front", "front"), ("back", "back"),
])
def test_flip_label_swaps_sides_and_keeps_front_back(value: str, flipped: str) -> None:
    label = {"color": "red", "type": "suv", "orientation": value}
    assert flip_label(label, DEFAULT_SCHEMA) == {"color": "red", "type": "suv",
                                                 "orientation": flipped}


def test_flip_label_without_orientation_is_unchanged() -> None:
    assert flip_label({"color": "blue"}, DEFAULT_SCHEMA) == {"color": "blue"}


def test_flip_image_mirrors_left_to_right() -> None:
    img = np.zeros((4, 6, 3), np.uint8)
    img[:, 0] = 255  # left column white
    out = flip_image(img)
    assert out.flags["C_CONTIGUOUS"]
    assert (out[:, -1] == 255).all() and (out[:, :-1] == 0).all()
    assert np.array_equal(flip_image(out), img)


def test_mirror_pairs_of_default_schema() -> None:
    pairs = {frozenset(p) for p in mirror_pairs(DEFAULT_SCHEMA)}
    assert pairs == {frozenset(("left", "right")), frozenset(("front-left", "front-right")),
                     frozenset(("back-left", "back-right"))}


def _labels(counts: dict[str, int]) -> dict[int, dict[str, str]]:
    out, i = {}, 0
    for value, n in counts.items():
        for _ in range(n):
            out[i] = {"orientation": value, "color": "red"}
            i += 1
    out[i] = {"color": "blue"}  # no orientation: kept, never flipped
    return out


def test_plan_tops_up_the_rarer_side_of_each_pair() -> None:
    labels = _labels({"left": 2, "right": 7, "back-left": 5, "back-right": 1, "front": 3,
                      "back": 9, "front-left": 4, "front-right": 4})
    plan = plan_orientation_balance(labels, DEFAULT_SCHEMA, seed=1)
    assert plan.before == class_counts(labels, DEFAULT_SCHEMA)
    assert plan.before["left"] == 2 and plan.before["back-right"] == 1
    assert plan.after["left"] == plan.after["right"] == 7
    assert plan.after["back-left"] == plan.after["back-right"] == 5
    assert plan.after["front-left"] == plan.after["front-right"] == 4
    assert plan.after["front"] == 3 and plan.after["back"] == 9
    assert plan.added == {"left": 5, "back-right": 4}
    flipped = [i for i, f in plan.entries if f]
    assert len(flipped) == 9 == plan.n_flipped
    assert sorted(v for i, v in ((i, labels[i]["orientation"]) for i in flipped)) == \
        sorted(["right"] * 5 + ["back-left"] * 4)
    assert len(set(flipped)) == len(flipped)  # each source image mirrored at most once
    originals = [i for i, f in plan.entries if not f]
    assert originals == sorted(labels)


def test_plan_is_seeded() -> None:
    labels = _labels({"left": 1, "right": 10})
    a = plan_orientation_balance(labels, DEFAULT_SCHEMA, seed=3).entries
    b = plan_orientation_balance(labels, DEFAULT_SCHEMA, seed=3).entries
    assert a == b


def test_plan_with_custom_schema_flip_map() -> None:
    schema = LabelSchema(classes={"view": ("port", "starboard", "bow")},
                         flip_map={"port": "starboard", "starboard": "port", "bow": "bow"},
                         flip_attribute="view")
    labels = {0: {"view": "port"}, 1: {"view": "port"}, 2: {"view": "bow"}}
    plan = plan_orientation_balance(labels, schema)
    assert plan.before == {"port": 2, "starboard": 0, "bow": 1}
    assert plan.after == {"port": 2, "starboard": 2, "bow": 1}


def test_balanced_dataset_mirrors_pixels_and_swaps_targets() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    data = SplitData(image_ids=[10, 11, 12, 13], images=images,
                     labels=[{"orientation": "back-right", "color": "red"},
                             {"orientation": "back-right"}, {"orientation": "front"},
                             {"color": "gray"}])
    ds, plan = LabelledImageDataset.balanced(data, DEFAULT_SCHEMA, lambda im: im.astype(np.float32))
    assert plan.after["back-left"] == 2 and len(ds) == 6
    o = DEFAULT_SCHEMA.attributes.index("orientation")
    c = DEFAULT_SCHEMA.attributes.index("color")
    for k in range(4, 6):
        row, flipped = ds.entries[k]
        assert flipped
        assert np.array_equal(ds.raw_image(k), images[row][:, ::-1])
        assert ds.targets[k, o] == DEFAULT_SCHEMA.index("orientation", "back-left")
        x, y = ds[k]
        assert np.array_equal(x.numpy().transpose(1, 2, 0), images[row][:, ::-1].astype(np.float32))
    # the flipped copy of the red image keeps its colour
    red = [k for k in range(4, 6) if ds.image_id(k) == 10]
    assert red and ds.targets[red[0], c] == DEFAULT_SCHEMA.index("color", "red")
    # originals unchanged
    assert ds.targets[0, o] == DEFAULT_SCHEMA.index("orientation", "back-right")
    assert ds.targets[3, o] == -1
