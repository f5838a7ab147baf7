"""TypiClust and ProbCover on hand-made embeddings whose right answer is known."""
from __future__ import annotations

import numpy as np
import pytest

from core.typicality import choose_delta, probcover, typicality, typiclust

CENTRES = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
SIZES = (30, 20, 10)


def _blob(centre: np.ndarray, n: int, step: float = 0.005) -> np.ndarray:
    """``n`` points on a golden-angle spiral whose radius grows linearly (``step * i``) around
    ``centre``: density falls with the distance from the centre, so the centre (point 0) is the
    most typical point by construction."""
    a = np.cross(centre, [0.3, 0.5, 0.7]); a /= np.linalg.norm(a)
    b = np.cross(centre, a)
    i = np.arange(n)
    angle = i * np.pi * (3 - np.sqrt(5))
    r = step * i
    return centre + r[:, None] * (np.cos(angle)[:, None] * a + np.sin(angle)[:, None] * b)


def _blobs() -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Three tight blobs of different sizes far apart (pairwise distance sqrt 2).

    Returns (points, blob of each point, index of each blob's central point).
    """
    parts, blob, central = [], [], []
    for b, (c, n) in enumerate(zip(CENTRES, SIZES)):
        central.append(len(blob))
        parts.append(_blob(c, n))
        blob.extend([b] * n)
    return np.concatenate(parts), np.array(blob), central


def test_typicality_is_highest_at_the_centre_of_a_blob():
    x, blob, central = _blobs()
    t = typicality(x[blob == 0], k=10)
    assert int(np.argmax(t)) == 0
    assert typicality(x[:1]).tolist() == [1.0]


def test_typiclust_picks_the_central_point_of_every_blob_largest_first():
    x, blob, central = _blobs()
    picks = typiclust(x, 3, seed=0)
    assert [int(blob[p]) for p in picks] == [0, 1, 2]          # one per blob, largest first
    assert list(picks) == central                              # the most typical = the centre


def test_typiclust_skips_blobs_already_labelled():
    x, blob, central = _blobs()
    labelled = CENTRES[:1] + 0.01                              # blob 0 is covered
    picks = typiclust(x, 2, labelled=labelled, seed=0)
    assert sorted(int(blob[p]) for p in picks) == [1, 2]
    assert set(picks.tolist()) == {central[1], central[2]}
    # a bigger budget returns each candidate at most once and never more than there are
    many = typiclust(x[:5], 10, seed=0)
    assert sorted(many.tolist()) == [0, 1, 2, 3, 4]


def test_probcover_covers_each_blob_once_then_skips_covered_ones():
    x, blob, central = _blobs()
    delta = 0.3                                                # inside a blob, never across
    picks = probcover(x, 3, delta=delta)
    assert [int(blob[p]) for p in picks] == [0, 1, 2]          # biggest uncovered ball first
    covered = probcover(x, 2, labelled=CENTRES[:1], delta=delta)
    assert sorted(int(blob[p]) for p in covered) == [1, 2]
    # once everything is covered, the rest is random but seeded and never repeats a pick
    a = probcover(x, 8, delta=delta, seed=1)
    b = probcover(x, 8, delta=delta, seed=1)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 8


def test_choose_delta_separates_the_blobs():
    x, blob, central = _blobs()
    delta = choose_delta(x, n_clusters=3, purity=0.95)
    # the largest radius whose balls are 95 % pure: wider than any blob, and 95 % of the balls
    # (but not 100 % of the slightly wider ones) stay inside their own blob
    u = x / np.linalg.norm(x, axis=1, keepdims=True)          # choose_delta's geometry
    d = np.linalg.norm(u[:, None] - u[None], axis=2)
    same = blob[:, None] == blob[None]
    to_other = np.where(same, np.inf, d).min(axis=1)
    assert d[same].max() < delta
    assert np.mean(to_other > delta) >= 0.95
    assert np.mean(to_other > delta * 1.01) < 0.95
    picks = probcover(x, 3, delta=delta)
    assert sorted(int(blob[p]) for p in picks) == [0, 1, 2]
    with pytest.raises(ValueError, match="delta"):
        probcover(x, 1, delta=float("nan"))
