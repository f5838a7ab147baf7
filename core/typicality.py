"""Cold-start selection on embeddings: TypiClust and ProbCover.

Why: with few labels a model's uncertainty is noise (an untrained network scores every image
0.99+ in normalised entropy), so uncertainty sampling is random sampling at best. At low budgets
it pays to label *typical* images that *cover* the data instead; both methods below do that on
the embeddings of a pretrained backbone (core/embeddings.py), so they need no trained model.

- TypiClust (Hacohen, Dekel & Weinshall, "Active Learning on a Budget: Opposite Strategies Suit
  High and Low Budgets", ICML 2022): k-means into ``|L| + B`` clusters; repeatedly take the
  largest cluster with the fewest labelled members and label its most typical point.
- ProbCover (Yehuda, Dekel, Hacohen & Weinshall, "Active Learning Through a Covering Lens",
  NeurIPS 2022): balls of radius ``delta`` around every point; greedily label the point whose
  ball covers the most not-yet-covered points.

Conventions: ``candidates`` ``(N, D)`` are the images that may be picked; ``labelled``
``(M, D)`` are images already labelled or queued, which count as covering their neighbourhood
and are never returned. Returned indices point into ``candidates``, in pick order. Embeddings are
L2-normalised first (cosine geometry, as both papers use). Distances, k-means and neighbour
searches are scikit-learn's.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import sparse
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from core.diversity import l2_normalise

K_NEIGHBOURS = 20
"""TypiClust's typicality neighbourhood (the paper's k = 20)."""
MAX_CLUSTERS = 500
"""TypiClust caps ``|L| + B`` clusters here (as the authors' code does) to keep k-means cheap."""
MIN_CLUSTER_SIZE = 5
"""Clusters smaller than this are treated as outliers and picked from last (authors' code)."""
CLUSTER_DIMS = 64
"""k-means runs on this many PCA components of wider embeddings (speed; see ``_kmeans``)."""
PURITY = 0.95
"""ProbCover's default purity threshold alpha for choosing delta."""


def _stack(candidates: np.ndarray, labelled: np.ndarray | None) -> tuple[np.ndarray, int]:
    c = np.asarray(candidates, dtype=np.float32)
    if c.ndim != 2:
        raise ValueError(f"expected embeddings of shape (N, D), got {c.shape}")
    if labelled is None or len(labelled) == 0:
        return l2_normalise(c), 0
    lab = np.asarray(labelled, dtype=np.float32)
    if lab.ndim != 2 or lab.shape[1] != c.shape[1]:
        raise ValueError(f"labelled embeddings {lab.shape} do not match candidates {c.shape}")
    return l2_normalise(np.concatenate([lab, c])), len(lab)


def typicality(x: np.ndarray, k: int = K_NEIGHBOURS) -> np.ndarray:
    """``1 / mean distance to the k nearest neighbours`` per row (the row itself excluded).

    High in dense regions. ``k`` is capped at ``N - 1``; a single point gets typicality 1.
    """
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    if n <= 1:
        return np.ones(n)
    k = max(1, min(int(k), n - 1))
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    return 1.0 / (dist[:, 1:].mean(axis=1) + 1e-8)


def _kmeans(x: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """Cluster labels. Full k-means for few clusters, mini-batch for many (the authors switch
    at 50 as well). Features wider than :data:`CLUSTER_DIMS` are clustered on their first PCA
    components: k-means cost grows with N x clusters x D, and 500 clusters over 1280-wide
    EfficientNet features took minutes on two cores; neighbour searches keep the full width."""
    if x.shape[1] > CLUSTER_DIMS and len(x) > CLUSTER_DIMS:
        x = PCA(n_components=CLUSTER_DIMS, random_state=seed).fit_transform(x)
    if n_clusters <= 50:
        model = KMeans(n_clusters=n_clusters, n_init=3, random_state=seed)
    else:
        model = MiniBatchKMeans(n_clusters=n_clusters, n_init=1, random_state=seed,
                                batch_size=max(1024, 3 * n_clusters))
    return model.fit_predict(x)


def typiclust(candidates: np.ndarray, budget: int, *, labelled: np.ndarray | None = None,
              k_neighbours: int = K_NEIGHBOURS, max_clusters: int = MAX_CLUSTERS,
              min_cluster_size: int = MIN_CLUSTER_SIZE, seed: int = 0) -> np.ndarray:
    """TypiClust: ``budget`` candidate indices, one per uncovered cluster, most typical first.

    All points (labelled and candidates) are clustered into ``min(|L| + B, max_clusters)``
    groups. Each pick takes the cluster with the fewest labelled-or-picked members (ties: the
    largest cluster) and labels its most typical candidate, where typicality is computed inside
    the cluster with ``k = min(k_neighbours, size // 2)`` (as in the authors' code). Clusters
    below ``min_cluster_size`` come last.
    """
    x, m = _stack(candidates, labelled)
    n_cand = len(x) - m
    budget = min(int(budget), n_cand)
    if budget <= 0:
        return np.zeros(0, dtype=np.int64)
    n_clusters = max(1, min(m + budget, max_clusters, len(x)))
    labels = _kmeans(x, n_clusters, seed) if n_clusters > 1 else np.zeros(len(x), np.int64)
    sizes = np.bincount(labels, minlength=n_clusters)
    covered = np.bincount(labels[:m], minlength=n_clusters) if m else np.zeros(n_clusters, np.int64)
    covered = covered.astype(np.int64)
    available = np.ones(len(x), dtype=bool)
    available[:m] = False
    left = np.bincount(labels[m:], minlength=n_clusters)      # pickable members per cluster
    small = sizes < min_cluster_size
    typ_cache: dict[int, np.ndarray] = {}
    picks: list[int] = []
    while len(picks) < budget:
        # sort key: outliers last, then fewest covered, then largest cluster, then cluster id
        order = np.lexsort((np.arange(n_clusters), -sizes, covered, small))
        cluster = next(int(c) for c in order if left[c] > 0)
        members = np.flatnonzero(labels == cluster)
        if cluster not in typ_cache:
            typ_cache[cluster] = typicality(x[members], min(k_neighbours, max(1, len(members) // 2)))
        typ = np.where(available[members], typ_cache[cluster], -np.inf)
        best = int(members[int(np.argmax(typ))])
        picks.append(best - m)
        available[best] = False
        covered[cluster] += 1
        left[cluster] -= 1
    return np.asarray(picks, dtype=np.int64)


def nearest_other_cluster_distance(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per point, the distance to the nearest point with a different cluster label."""
    out = np.full(len(x), np.inf)
    for c in np.unique(labels):
        inside = labels == c
        if inside.all():
            continue
        nn = NearestNeighbors(n_neighbors=1).fit(x[~inside])
        out[inside] = nn.kneighbors(x[inside])[0][:, 0]
    return out


def choose_delta(embeddings: np.ndarray, n_clusters: int, *, purity: float = PURITY,
                 seed: int = 0) -> float:
    """ProbCover's ball radius: the largest ``delta`` whose balls are ``purity`` pure.

    The paper clusters the embeddings with k-means into as many clusters as there are classes
    and calls a ball pure when every point in it shares the centre's cluster. A ball of radius
    delta around ``x`` is pure exactly when ``delta`` is below the distance from ``x`` to the
    nearest point of another cluster, so the largest delta with a pure fraction ``>= purity``
    is the ``(1 - purity)`` quantile of those distances, computed here in one pass instead of
    the paper's grid search. Embeddings are L2-normalised first.
    """
    x = l2_normalise(np.asarray(embeddings, dtype=np.float32))
    k = max(2, min(int(n_clusters), len(x)))
    if len(x) < 3:
        return 0.0
    labels = _kmeans(x, k, seed)
    d = nearest_other_cluster_distance(x, labels)
    d = d[np.isfinite(d)]
    if not len(d):
        return 0.0
    return float(np.quantile(d, 1.0 - purity))


def probcover(candidates: np.ndarray, budget: int, *, labelled: np.ndarray | None = None,
              delta: float, seed: int = 0) -> np.ndarray:
    """ProbCover: greedy maximum coverage of radius-``delta`` balls; candidate indices.

    Points within ``delta`` of a labelled point start covered. Each pick is the candidate whose
    ball holds the most uncovered points; its ball then becomes covered. When everything is
    covered the rest of the budget is drawn at random (seeded), as in the paper.
    """
    x, m = _stack(candidates, labelled)
    n_cand = len(x) - m
    budget = min(int(budget), n_cand)
    if budget <= 0:
        return np.zeros(0, dtype=np.int64)
    if not (delta >= 0 and math.isfinite(delta)):
        raise ValueError("delta must be a finite number >= 0")
    graph = NearestNeighbors(radius=float(delta)).fit(x).radius_neighbors_graph(x, mode="connectivity")
    graph = sparse.csr_matrix(graph, dtype=np.float32)
    graph.setdiag(1.0)                       # a point always covers itself
    graph.eliminate_zeros()
    uncovered = np.ones(len(x), dtype=bool)
    if m:
        uncovered[graph[:m].indices] = False
    available = np.ones(len(x), dtype=bool)
    available[:m] = False
    rng = np.random.default_rng(seed)
    picks: list[int] = []
    while len(picks) < budget:
        gain = graph @ uncovered.astype(np.float32)
        gain[~available] = -1.0
        best = int(np.argmax(gain))
        if gain[best] <= 0:                  # full coverage: random for the remainder
            rest = np.flatnonzero(available)
            extra = rng.choice(rest, size=budget - len(picks), replace=False)
            picks.extend(int(i) - m for i in extra)
            break
        picks.append(best - m)
        available[best] = False
        uncovered[graph[best].indices] = False
    return np.asarray(picks, dtype=np.int64)
