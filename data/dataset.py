"""A torch Dataset over the labelled images of one split, read from the preprocessed cache.

Why from the cache: the cache already holds every image decoded and resized to the training
resolution as uint8, so an epoch costs augmentation + the network, never JPEG decoding. The rows
of a split are copied into memory once (1,000 images at 128 px are 49 MB).

Targets are one integer per attribute (schema order), ``-1`` where the image's current label does
not give that attribute: partial labels are normal and the loss masks them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Collection, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from data.schema import LabelSchema
from data.store import ProjectStore
from data.balance import BalancePlan, flip_image, flip_label, plan_orientation_balance
from data.cache import ImageCache

log = logging.getLogger(__name__)

MISSING = -1


def encode_targets(labels: Sequence[Mapping[str, str]], schema: LabelSchema) -> np.ndarray:
    """``(N, n_attributes)`` int64 class indices, ``-1`` for missing (or no longer known) values."""
    attrs = schema.attributes
    out = np.full((len(labels), len(attrs)), MISSING, dtype=np.int64)
    index = {a: {name: k for k, name in enumerate(schema.classes[a])} for a in attrs}
    unknown = 0
    for row, values in enumerate(labels):
        for col, attr in enumerate(attrs):
            value = values.get(attr)
            if value is None:
                continue
            k = index[attr].get(value)
            if k is None:  # the project's class list changed after labelling
                unknown += 1
                continue
            out[row, col] = k
    if unknown:
        log.warning("%d label values are not classes of the current schema; treated as missing",
                    unknown)
    return out


@dataclass
class SplitData:
    """The labelled images of one split in memory: ids, uint8 pixels, label dicts."""

    image_ids: list[int]
    images: np.ndarray               # (N, S, S, 3) uint8
    labels: list[dict[str, str]]

    def __len__(self) -> int:
        return len(self.image_ids)


def load_split(store: ProjectStore, cache: ImageCache, split: str, *,
               only: Collection[int] | None = None) -> SplitData:
    """Labelled images of ``split`` (current label versions) with their cached pixels.

    ``only`` keeps just those image ids (the evaluation set within the test split). Images
    without a cache row (ingestion crashed between the two writes) are skipped with a warning
    rather than failing the whole training run.
    """
    labels = store.current_labels(split=split)
    if only is not None:
        keep = set(only)
        labels = {i: v for i, v in labels.items() if i in keep}
    records = store.images(sorted(labels)) if labels else []
    usable = [r for r in records if r.cache_row is not None]
    if len(usable) < len(records):
        log.warning("%d labelled %s images have no cache row; skipped",
                    len(records) - len(usable), split)
    pixels = cache.read([r.cache_row for r in usable])
    return SplitData(image_ids=[r.id for r in usable], images=pixels,
                     labels=[dict(labels[r.id]) for r in usable])


class LabelledImageDataset(Dataset):
    """Items are ``(float32 3xSxS tensor, int64 targets per attribute)``.

    ``entries`` are ``(index into data, mirrored?)`` pairs; a mirrored entry is the image
    flipped left-right with the flip attribute's label swapped (see :mod:`data.balance`).
    """

    def __init__(self, data: SplitData, schema: LabelSchema,
                 transform: Callable[[np.ndarray], np.ndarray],
                 entries: Sequence[tuple[int, bool]] | None = None, *,
                 mirror_prob: float = 0.0, seed: int = 0) -> None:
        self.data = data
        self.schema = schema
        self.transform = transform
        self.entries = list(entries) if entries is not None else [(i, False) for i in range(len(data))]
        labels = [flip_label(data.labels[i], schema) if flipped else data.labels[i]
                  for i, flipped in self.entries]
        self.targets = encode_targets(labels, schema)
        # random mirror augmentation: each time an item is drawn, with probability
        # ``mirror_prob`` it comes mirrored with its mirrored label (orientation swapped)
        self.mirror_prob = float(mirror_prob)
        self.mirror_targets = encode_targets([flip_label(v, schema) for v in labels], schema) \
            if self.mirror_prob > 0 else self.targets
        self._rng = np.random.default_rng(seed)

    @classmethod
    def balanced(cls, data: SplitData, schema: LabelSchema,
                 transform: Callable[[np.ndarray], np.ndarray], *,
                 seed: int = 0, mirror_prob: float = 0.0
                 ) -> tuple["LabelledImageDataset", BalancePlan]:
        """A flip-balanced view of ``data`` and the plan with before/after class counts."""
        position = {image_id: k for k, image_id in enumerate(data.image_ids)}
        plan = plan_orientation_balance(dict(zip(data.image_ids, data.labels)), schema, seed=seed)
        entries = [(position[image_id], flipped) for image_id, flipped in plan.entries]
        return cls(data, schema, transform, entries, mirror_prob=mirror_prob, seed=seed), plan

    @property
    def attributes(self) -> tuple[str, ...]:
        return self.schema.attributes

    def image_id(self, index: int) -> int:
        return self.data.image_ids[self.entries[index][0]]

    def raw_image(self, index: int) -> np.ndarray:
        """The uint8 image an item is made from (mirrored if the entry says so), no augmentation."""
        row, flipped = self.entries[index]
        image = self.data.images[row]
        return flip_image(image) if flipped else image

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.raw_image(index)
        targets = self.targets[index]
        if self.mirror_prob > 0 and self._rng.random() < self.mirror_prob:
            image, targets = flip_image(image), self.mirror_targets[index]
        image = self.transform(image)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
        return tensor, torch.from_numpy(targets)


@dataclass
class UnlabelledPool:
    """Train-split images that miss at least one attribute: cache rows + per-head masks."""

    image_ids: list[int]
    cache_rows: np.ndarray           # (N,) int64
    missing: np.ndarray              # (N, n_attributes) bool

    def __len__(self) -> int:
        return len(self.image_ids)


def load_unlabelled_pool(store: ProjectStore, schema: LabelSchema, *, split: str = "train",
                         max_images: int | None = None, seed: int = 0) -> UnlabelledPool:
    """Images of ``split`` with at least one attribute unlabelled (read-only on the store).

    Only the train split: using val/test images, even unlabelled, would let the evaluation
    images shape the model. ``max_images`` keeps a seeded random subset (memory and time).
    """
    labels = store.current_labels(split=split)
    records = [r for r in store.images(split=split) if r.cache_row is not None]
    targets = encode_targets([labels.get(r.id, {}) for r in records], schema)
    missing = targets == MISSING
    keep = np.flatnonzero(missing.any(axis=1))
    if max_images is not None and len(keep) > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(keep, int(max_images), replace=False))
    return UnlabelledPool(image_ids=[records[i].id for i in keep],
                          cache_rows=np.array([records[i].cache_row for i in keep], np.int64),
                          missing=missing[keep])
