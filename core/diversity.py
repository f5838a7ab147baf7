"""Diversity step: spread a batch over the embedding space so it is not K near-identical frames.

Why: uncertainty alone ranks near-duplicates together (consecutive video frames of one car get
the same score), so a batch of 200 can teach the model what 20 would. The fix used here is the
usual two-stage one: pre-select the ``pool_factor * K`` most uncertain images, then choose K of
them that cover that set (k-center greedy, or one image per k-means cluster), and show them in
uncertainty order.

Inputs are plain arrays (embeddings ``(N, D)`` from the network's penultimate layer, scores
``(N,)``), so this module knows nothing about models or the store. The queue passes the
embeddings of the images already labelled or queued as ``existing`` centres, so a batch fills
the gaps the labelled set leaves instead of re-covering it.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

Method = Literal["kcenter", "kmeans"]
METHODS: tuple[str, ...] = ("kcenter", "kmeans")


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (cosine geometry; ReLU features vary a lot in norm)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def _sq_dist_to(x: np.ndarray, x_sq: np.ndarray, centre: np.ndarray) -> np.ndarray:
    d = x_sq - 2.0 * (x @ centre) + float(centre @ centre)
    return np.maximum(d, 0.0)


def _min_sq_dist(x: np.ndarray, centres: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """For every row of x, the squared distance to its nearest row of ``centres``."""
    out = np.full(len(x), np.inf, dtype=np.float64)
    x_sq = (x.astype(np.float64) ** 2).sum(axis=1)
    for start in range(0, len(centres), chunk):
        c = centres[start:start + chunk].astype(np.float64)
        d = x_sq[:, None] - 2.0 * (x.astype(np.float64) @ c.T) + (c ** 2).sum(axis=1)[None, :]
        out = np.minimum(out, np.maximum(d, 0.0).min(axis=1))
    return out


def kcenter_greedy(embeddings: np.ndarray, k: int, *, first: int | None = 0,
                   existing: np.ndarray | None = None) -> list[int]:
    """Farthest-first traversal: each pick is the point farthest from everything picked so far.

    This is the 2-approximation of the k-center problem (minimise the largest distance from
    any point to its nearest chosen centre), the core-set selection of Sener & Savarese.
    ``existing`` (e.g. embeddings of already-labelled images) count as chosen centres from the
    start; otherwise the first pick is index ``first`` (pass the most uncertain image).
    Returns indices in the order picked.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    n = len(x)
    k = min(int(k), n)
    if k <= 0:
        return []
    x_sq = (x ** 2).sum(axis=1)
    chosen: list[int] = []
    if existing is not None and len(existing):
        min_d = _min_sq_dist(x, np.asarray(existing, dtype=np.float64))
    else:
        start = 0 if first is None else int(first)
        chosen.append(start)
        min_d = _sq_dist_to(x, x_sq, x[start])
    min_d[chosen] = -1.0
    while len(chosen) < k:
        nxt = int(np.argmax(min_d))
        chosen.append(nxt)
        min_d = np.minimum(min_d, _sq_dist_to(x, x_sq, x[nxt]))
        min_d[chosen] = -1.0
    return chosen


def kmeans_pick(embeddings: np.ndarray, scores: np.ndarray, k: int, *, seed: int = 0) -> list[int]:
    """Cluster into ``k`` groups (k-means) and take the highest-scoring image of each group."""
    from sklearn.cluster import KMeans

    x = np.asarray(embeddings, dtype=np.float32)
    s = np.asarray(scores, dtype=np.float64)
    n = len(x)
    k = min(int(k), n)
    if k <= 0:
        return []
    if k == n:
        return list(range(n))
    labels = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(x)
    picks = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        if len(members):
            picks.append(int(members[np.argmax(s[members])]))
    if len(picks) < k:  # empty clusters (duplicates): fill with the best remaining by score
        rest = [int(i) for i in np.argsort(-s, kind="stable") if int(i) not in set(picks)]
        picks.extend(rest[:k - len(picks)])
    return picks


def select_diverse(scores: np.ndarray, embeddings: np.ndarray, k: int, *,
                   method: Method = "kcenter", pool_factor: float = 4.0,
                   existing: np.ndarray | None = None, normalise: bool = True,
                   seed: int = 0, preselected: np.ndarray | None = None) -> np.ndarray:
    """Uncertainty pre-selection, then a diverse subset; returns indices sorted by score.

    ``pool_factor`` sets the pre-selection size (``pool_factor * k`` most uncertain); 1 means
    plain top-k, large values approach pure diversity sampling. ``preselected`` (indices)
    replaces that top-m pre-selection, e.g. with a stochastic draw. ``existing``: embeddings
    of images already labelled or queued, which count as chosen centres (a true core-set).
    """
    s = np.asarray(scores, dtype=np.float64)
    emb = np.asarray(embeddings)
    if len(s) != len(emb):
        raise ValueError(f"{len(s)} scores but {len(emb)} embeddings")
    if method not in METHODS:
        raise ValueError(f"unknown diversity method {method!r}; choose from {', '.join(METHODS)}")
    k = min(int(k), len(s))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if preselected is not None:
        cand = np.asarray(preselected, dtype=np.int64)
        k = min(k, len(cand))
    else:
        order = np.argsort(-s, kind="stable")
        m = min(len(s), max(k, int(round(pool_factor * k))))
        cand = order[:m]
    x = emb[cand]
    ex = existing
    if normalise:
        x = l2_normalise(x)
        ex = l2_normalise(existing) if existing is not None and len(existing) else None
    if method == "kcenter":
        first = int(np.argmax(s[cand])) if len(cand) else 0
        local = kcenter_greedy(x, k, first=first, existing=ex)
    else:
        local = kmeans_pick(x, s[cand], k, seed=seed)
    picked = cand[np.asarray(local, dtype=np.int64)]
    return picked[np.argsort(-s[picked], kind="stable")]
