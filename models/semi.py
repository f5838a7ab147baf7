"""Semi-supervised training: learn from the unlabelled pool without ever labelling it.

Two tools, both per head with the same "missing attribute" masks as the supervised loss:

- **FixMatch-style consistency** (Sohn et al., NeurIPS 2020) for full training: for a batch of
  unlabelled train-split images, the model's prediction on a *weak* view (small shift-scale,
  eval mode, no gradient) becomes a pseudo-label wherever its top probability reaches
  ``threshold`` (0.95); the loss is cross-entropy of the *strong* view's logits against it.
  A head only learns from images that miss that attribute (an image labelled "red" teaches the
  colour head through the supervised loss, never through a pseudo-label), and only heads that
  have real labels in the run take part (an untrained head's confident guesses are noise).
- **Label spreading on embeddings** (``sklearn.semi_supervised.LabelSpreading``), the cheap
  first step on cached backbone features: labels diffuse over a k-NN graph of labelled + pool
  embeddings; the benchmark uses its confident outputs as extra training rows for the heads.

Pseudo-labels live only in memory for one step (or one fit). Nothing here writes the store
(``models/`` never does); tests check that the label tables are unchanged after a run.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from data.cache import ImageCache
from data.dataset import UnlabelledPool
from data.schema import LabelSchema
from data.transforms import normalised, strong_augmentations, weak_augmentations

SEMI_METHODS: tuple[str, ...] = ("none", "fixmatch")
DEFAULT_THRESHOLD = 0.95


# -- the loss (hand-checked in tests/test_semi.py) ---------------------------------------------

def unlabelled_loss(strong_logits: Mapping[str, torch.Tensor],
                    weak_logits: Mapping[str, torch.Tensor],
                    missing: torch.Tensor, attributes: Sequence[str], *,
                    threshold: float = DEFAULT_THRESHOLD,
                    active: Sequence[bool] | None = None
                    ) -> tuple[torch.Tensor, dict[str, dict[str, float]]]:
    """Sum over heads of the FixMatch unlabelled loss, masked per head.

    ``missing`` is ``(N, n_attributes)`` bool: True where the image has no label for that
    attribute (only those images are eligible for a pseudo-label on that head). For head ``a``
    with ``E`` eligible images, the term is ``(1/E) * sum over eligible images whose weak-view
    top probability >= threshold of CE(strong logits, weak argmax)``: FixMatch's mean over the
    unlabelled batch, where unconfident images count as 0. A head with no eligible image, or
    not ``active``, contributes exactly 0. Returns the total and per-head
    ``{"loss", "eligible", "confident"}``.
    """
    device = missing.device
    total = torch.zeros((), dtype=torch.float32, device=device)
    stats: dict[str, dict[str, float]] = {}
    for col, attr in enumerate(attributes):
        eligible = missing[:, col].bool()
        n_eligible = int(eligible.sum())
        if (active is not None and not active[col]) or n_eligible == 0:
            stats[attr] = {"loss": 0.0, "eligible": float(n_eligible), "confident": 0.0}
            continue
        with torch.no_grad():
            probs = torch.softmax(weak_logits[attr].detach().float(), dim=1)
            conf, pseudo = probs.max(dim=1)
            keep = eligible & (conf >= threshold)
        ce = F.cross_entropy(strong_logits[attr].float(), pseudo, reduction="none")
        loss = (ce * keep.float()).sum() / n_eligible
        stats[attr] = {"loss": float(loss.detach()), "eligible": float(n_eligible),
                       "confident": float(keep.sum())}
        total = total + loss
    return total, stats


# -- the unlabelled pool -----------------------------------------------------------------------

class TwoViewDataset(Dataset):
    """Items ``(weak view, strong view, missing mask)`` of the unlabelled pool, read lazily.

    Pixels come from the cache's memory map one image at a time, so an 11k pool costs no RAM.
    """

    def __init__(self, pool: UnlabelledPool, cache: ImageCache, image_size: int, *,
                 seed: int = 0) -> None:
        self.pool = pool
        self.cache = cache
        self.weak = normalised(weak_augmentations(image_size), seed=seed)
        self.strong = normalised(strong_augmentations(image_size), seed=seed + 1)
        self._pixels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pool)

    @staticmethod
    def _tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._pixels is None:
            self._pixels = self.cache.array()
        image = np.asarray(self._pixels[self.pool.cache_rows[index]])
        return (self._tensor(self.weak(image=image)["image"]),
                self._tensor(self.strong(image=image)["image"]),
                torch.from_numpy(self.pool.missing[index]))


@dataclass
class FixMatchTerm:
    """The unlabelled part of each training step, so ``models.train`` adds one line per step.

    Draws the next unlabelled batch (cycling, reshuffled every pass), predicts the weak view in
    eval mode without gradient, and returns ``weight * unlabelled_loss`` on the strong view.
    Per-epoch counts of eligible and confident images are kept for the training log.
    """

    loader: DataLoader
    attributes: Sequence[str]
    active: Sequence[bool]
    threshold: float = DEFAULT_THRESHOLD
    weight: float = 1.0
    _it: Iterator | None = None
    totals: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def build(cls, pool: UnlabelledPool, cache: ImageCache, schema: LabelSchema, *,
              labelled_targets: np.ndarray, image_size: int, batch_size: int,
              threshold: float = DEFAULT_THRESHOLD, weight: float = 1.0,
              seed: int = 0) -> "FixMatchTerm | None":
        """None when the pool has fewer than 2 eligible images (nothing to learn from).

        ``pool`` comes from :func:`data.dataset.load_unlabelled_pool` (core reads the store).
        """
        if len(pool) < 2:  # BatchNorm cannot train on a batch of one image
            return None
        dataset = TwoViewDataset(pool, cache, image_size, seed=seed)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed + 7),
                            drop_last=len(dataset) > batch_size)
        active = [bool(v) for v in (np.asarray(labelled_targets) >= 0).any(axis=0)]
        return cls(loader, list(schema.attributes), active, threshold, weight)

    def _next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._it is None:
            self._it = iter(self.loader)
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            return next(self._it)

    def loss(self, model: nn.Module, device: torch.device, memory_format: torch.memory_format,
             bf16: bool = False) -> torch.Tensor:
        weak, strong, missing = self._next()
        weak = weak.to(device).contiguous(memory_format=memory_format)
        strong = strong.to(device).contiguous(memory_format=memory_format)
        autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16)
                    if bf16 else contextlib.nullcontext())
        was_training = model.training
        model.eval()
        with torch.no_grad(), autocast:
            weak_logits = model(weak)
        model.train(was_training)
        with autocast:
            strong_logits = model(strong)
        loss, stats = unlabelled_loss(strong_logits, weak_logits, missing.to(device),
                                      self.attributes, threshold=self.threshold,
                                      active=self.active)
        for attr, s in stats.items():
            t = self.totals.setdefault(attr, {"eligible": 0.0, "confident": 0.0})
            t["eligible"] += s["eligible"]
            t["confident"] += s["confident"]
        return self.weight * loss

    def epoch_stats(self) -> dict[str, float | None]:
        """Share of eligible unlabelled images that got a pseudo-label, per head; then reset."""
        out = {a: (t["confident"] / t["eligible"] if t["eligible"] else None)
               for a, t in self.totals.items()}
        self.totals = {}
        return out


# -- label spreading on cached embeddings ------------------------------------------------------

def spread_labels(embeddings: np.ndarray, labels: np.ndarray, n_classes: int, *,
                  n_neighbors: int = 10, alpha: float = 0.2, max_iter: int = 100
                  ) -> np.ndarray:
    """Class distributions ``(N, n_classes)`` for every row, labels diffused over a k-NN graph.

    ``labels`` is ``(N,)`` with ``-1`` for unlabelled rows. Embeddings are L2-normalised first
    (cosine geometry, as in selection). Classes absent from the labelled rows get probability 0.
    Rows the graph does not connect to any labelled row get all zeros. Fixed hyper-parameters
    (k=10, alpha=0.2: Zhou et al.'s clamping), never tuned on a test split.
    """
    from sklearn.neighbors import kneighbors_graph
    from sklearn.semi_supervised import LabelSpreading

    x = np.asarray(embeddings, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    y = np.asarray(labels, dtype=np.int64)
    present = np.unique(y[y >= 0])
    out = np.zeros((len(x), n_classes), dtype=np.float64)
    if len(present) == 0:
        return out
    if len(present) == 1:
        out[:, present[0]] = 1.0
        return out
    k = min(n_neighbors, len(x) - 1)

    def symmetric_knn(a: np.ndarray, b: np.ndarray):
        # sklearn's own "knn" kernel is a directed graph: a labelled point that is nobody's
        # neighbour never spreads its label. Symmetrise it (i~j if either is in the other's
        # k nearest), sparse so an 11k pool stays small.
        graph = kneighbors_graph(a, k, mode="connectivity", include_self=False)
        return graph.maximum(graph.T).tocsr()

    model = LabelSpreading(kernel=symmetric_knn, alpha=alpha, max_iter=max_iter)
    model.fit(x, y)
    dist = np.nan_to_num(model.label_distributions_, nan=0.0)
    out[:, model.classes_.astype(np.int64)] = dist
    return out


def confident_pseudo_labels(probs: np.ndarray, threshold: float
                            ) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, classes) of rows whose top probability reaches ``threshold``."""
    p = np.asarray(probs, dtype=np.float64)
    rows = np.flatnonzero(p.max(axis=1) >= threshold) if len(p) else np.zeros(0, np.int64)
    return rows, p[rows].argmax(axis=1) if len(rows) else np.zeros(0, np.int64)
