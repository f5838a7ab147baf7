"""Orientation balancing by horizontal flip, with the label swapped through the schema.

Why: real pools are lopsided between mirror-image views (a camera on the right-hand side of the
road sees far more back-left than back-right). Mirroring a back-right image yields a genuine
back-left one, so the rarer side of each mirror pair can be topped up with flipped copies of the
commoner side, without inventing data. ``front`` and ``back`` map to themselves under a flip, so
flipping cannot change their counts; they are left alone. Colour and type are unchanged by a
mirror and keep their values.

The plan adds only as many flipped copies as the deficit of each pair (never more than the
commoner side has images), so training time grows by the imbalance, not by 2x.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from data.schema import LabelSchema


def flip_image(image: np.ndarray) -> np.ndarray:
    """Mirror an ``H x W x C`` image, or an ``N x H x W x C`` batch, left to right (a
    contiguous copy)."""
    return np.ascontiguousarray(image[..., ::-1, :])


def flip_label(values: Mapping[str, str], schema: LabelSchema) -> dict[str, str]:
    """The label a mirrored image carries: the flip attribute through ``schema.flip_map``."""
    out = dict(values)
    attr = schema.flip_attribute
    if attr in out:
        out[attr] = schema.flip_value(out[attr])
    return out


def mirror_maps(schema: LabelSchema) -> dict[str, dict[str, str]]:
    """{flip attribute: {class: the class a mirror shows}}, every class listed; attributes a
    mirror leaves unchanged (colour, type) are absent. What mirror-aware heads are fitted with."""
    attr = schema.flip_attribute
    if attr not in schema.classes:
        return {}
    return {attr: {c: schema.flip_value(c) for c in schema.classes[attr]}}


def mirror_permutation(names: Sequence[str], flips: Mapping[str, str]) -> list[int]:
    """``perm[k]``: the index in ``names`` of the class ``names[k]`` becomes in a mirror
    (``flips``, a :func:`mirror_maps` entry; a class it does not name stays itself)."""
    return [list(names).index(flips.get(c, c)) for c in names]


def mirror_permutations(schema: LabelSchema) -> dict[str, list[int]]:
    """{attribute: perm} (:func:`mirror_permutation`) for every attribute, the identity where a
    mirror changes nothing. What a network's mirror views use."""
    maps = mirror_maps(schema)
    return {attr: mirror_permutation(names, maps.get(attr, {}))
            for attr, names in schema.classes.items()}


def class_counts(labels: Mapping[int, Mapping[str, str]], schema: LabelSchema,
                 attribute: str | None = None) -> dict[str, int]:
    """Per-class counts of one attribute (default: the flip attribute), every class listed."""
    attr = attribute or schema.flip_attribute
    counts = Counter(v[attr] for v in labels.values() if attr in v)
    return {name: int(counts.get(name, 0)) for name in schema.classes.get(attr, ())}


def mirror_pairs(schema: LabelSchema) -> list[tuple[str, str]]:
    """Unordered class pairs that a flip swaps (``front``/``back`` map to themselves: none)."""
    pairs: list[tuple[str, str]] = []
    for a, b in schema.flip_map.items():
        if a != b and (b, a) not in pairs and (a, b) not in pairs:
            pairs.append((a, b))
    return pairs


@dataclass
class BalancePlan:
    """Which images to use and whether mirrored; counts of the flip attribute before/after.

    ``entries`` lists every original ``(image_id, False)`` followed by the added
    ``(image_id, True)`` flipped copies.
    """

    entries: list[tuple[int, bool]]
    before: dict[str, int]
    after: dict[str, int]
    added: dict[str, int] = field(default_factory=dict)  # flipped copies added, by new class

    @property
    def n_flipped(self) -> int:
        return sum(1 for _, flipped in self.entries if flipped)


def plan_orientation_balance(labels: Mapping[int, Mapping[str, str]], schema: LabelSchema,
                             *, seed: int = 0) -> BalancePlan:
    """Top up the rarer class of every mirror pair with flipped copies of the commoner one.

    For a pair (a, b) with ``n_a < n_b``, ``n_b - n_a`` distinct images of class b (chosen with
    ``seed``) are added mirrored, now labelled a, so both sides end with ``n_b`` images.
    """
    attr = schema.flip_attribute
    ids = sorted(labels)
    entries: list[tuple[int, bool]] = [(i, False) for i in ids]
    before = class_counts(labels, schema)
    after = dict(before)
    added: dict[str, int] = {}
    by_class: dict[str, list[int]] = {}
    for i in ids:
        value = labels[i].get(attr)
        if value is not None:
            by_class.setdefault(value, []).append(i)
    rng = random.Random(seed)
    for a, b in mirror_pairs(schema):
        n_a, n_b = len(by_class.get(a, [])), len(by_class.get(b, []))
        if n_a == n_b:
            continue
        rare, common = (a, b) if n_a < n_b else (b, a)
        deficit = abs(n_b - n_a)
        chosen = sorted(rng.sample(by_class[common], deficit))
        entries.extend((i, True) for i in chosen)
        after[rare] = after.get(rare, 0) + deficit
        added[rare] = deficit
    return BalancePlan(entries=entries, before=before, after=after, added=added)
