"""Head-only refits: one linear classifier per attribute on fixed embeddings.

This is the fast half of the two-speed loop. After every saved batch of labels the heads are
refitted on cached pool embeddings (seconds) while full fine-tuning stays the Retrain button
(minutes). Pure functions over arrays: no store, no files.

Why scikit-learn's ``LogisticRegression`` (L-BFGS, multinomial softmax) and not a torch linear
layer: a linear head on frozen features is a convex problem, so a second-order solver reaches
the optimum in a few dozen iterations with no learning rate, epoch count or seed to tune; the
result is the same every time for the same labels, which keeps the re-ranked queue stable
between two refits with unchanged labels. The training set is the labelled images only
(hundreds to a few thousand rows), so fitting 1280-wide heads takes well under a second per head
on one core; predicting the whole pool is one matrix product per head in numpy.

Both run with BLAS/OpenMP limited to one thread (``threadpool_limits``): these matrices are too
small to gain from a second thread, and on a busy 2-core machine (the app, a training job) the
OpenMP spin-waits made one 1000 x 1280 fit 20x slower with two threads than with one.

Mirror views (``mirrored=``): a car seen in a mirror is still a car of the same colour and type,
and its orientation is the schema's mirror class (left <-> right, front-left <-> front-right, ...).
Given the embeddings of the horizontally mirrored images, each labelled image trains its head
twice (as itself, and mirrored with the mirrored class), and prediction averages the two views,
mapping the mirror view's classes back. The head then obeys the symmetry by construction instead
of having to learn it from few labels. On the real orientation set (Lite0, 128 px, 500 random
labels, 3 seeds) it lifted the head from 0.621 to 0.671, above the fine-tuned 1,000-label
reference 0.619 (docs/BENCHMARKS.md, "Mirror views and the fine-tuned reference A").

Missing attributes are masked per head: an image labelled only for ``color`` trains the color
head and nothing else. Features are standardised with statistics of a reference set (the
caller passes the train split's embeddings, labelled or not, so a handful of labels does not
decide the scale), and the scaling is folded into the returned coefficients, so prediction is
``softmax(x @ coef.T + intercept)`` on raw embeddings.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from data.balance import mirror_permutation

DEFAULT_C = 1.0
DEFAULT_MAX_ITER = 500


@dataclass
class HeadFit:
    """One attribute's linear head.

    ``classes`` is the full class list (columns of :meth:`HeadsFit.predict_proba`);
    ``seen`` the classes present in the training labels, in the order of ``coef`` rows.
    A head with fewer than two seen classes is not fitted (``fitted`` False) and predicts the
    uniform distribution: it then adds the same uncertainty to every image and does not move
    the ranking, which is the honest thing to do without evidence.
    """

    attribute: str
    classes: list[str]
    seen: list[str]
    coef: np.ndarray          # (len(seen), D), on raw (unscaled) embeddings
    intercept: np.ndarray     # (len(seen),)
    n_train: int
    fitted: bool
    mirror: np.ndarray | None = None   # (len(classes),) class index each class becomes mirrored

    @property
    def columns(self) -> np.ndarray:
        """Column of each seen class in the full class list."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[c] for c in self.seen], dtype=np.int64)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(N, len(classes)) float32 probabilities; unseen classes get 0."""
        x = np.asarray(x, dtype=np.float32)
        out = np.zeros((len(x), len(self.classes)), np.float32)
        if not self.fitted:
            out[:] = 1.0 / len(self.classes)
            return out
        with threadpool_limits(limits=1):
            z = x @ self.coef.T + self.intercept
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        out[:, self.columns] = z
        return out

    def predict_proba_views(self, x: np.ndarray, mirrored: np.ndarray | None) -> np.ndarray:
        """Mean of the plain view and the mirror view mapped back (plain view alone when this
        head was fitted without mirrors or ``mirrored`` is None)."""
        p = self.predict_proba(x)
        if mirrored is None or self.mirror is None or not self.fitted:
            return p
        return 0.5 * (p + self.predict_proba(mirrored)[:, self.mirror])


@dataclass
class HeadsFit:
    """Every head of one refit, plus what it was fitted on and how long it took."""

    heads: dict[str, HeadFit]
    feature_dim: int
    class_weight: str | None
    C: float
    fit_s: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def attributes(self) -> list[str]:
        return list(self.heads)

    @property
    def mirrored(self) -> bool:
        """Whether the heads were fitted with mirror views (then pass them to predict too)."""
        return any(h.mirror is not None for h in self.heads.values())

    def predict_proba(self, x: np.ndarray, mirrored: np.ndarray | None = None
                      ) -> dict[str, np.ndarray]:
        """{attribute: (N, K)} for embeddings ``x`` of shape (N, D).

        ``mirrored``: embeddings of the same N images mirrored left-right; with heads fitted on
        mirror views, the two views' probabilities are averaged (see the module docstring).
        """
        x = self._check(x)
        m = None if mirrored is None else self._check(mirrored)
        if m is not None and m.shape != x.shape:
            raise ValueError(f"mirror views {m.shape} do not match the images {x.shape}")
        return {a: h.predict_proba_views(x, m) for a, h in self.heads.items()}

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise ValueError(f"expected embeddings of shape (N, {self.feature_dim}), got {x.shape}")
        return x

    def n_train(self) -> dict[str, int]:
        return {a: h.n_train for a, h in self.heads.items()}


def _scaling(reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = reference.mean(axis=0, dtype=np.float64)
    std = reference.std(axis=0, dtype=np.float64)
    std[std < 1e-6] = 1.0  # a constant feature carries no information; leave it unscaled
    return mean.astype(np.float32), std.astype(np.float32)


def fit_heads(embeddings: np.ndarray, labels: Sequence[Mapping[str, str]],
              classes: Mapping[str, Sequence[str]], *, reference: np.ndarray | None = None,
              class_weight: str | None = None, C: float = DEFAULT_C,
              max_iter: int = DEFAULT_MAX_ITER, mirrored: np.ndarray | None = None,
              mirror_map: Mapping[str, Mapping[str, str]] | None = None) -> HeadsFit:
    """Fit one multinomial logistic regression per attribute of ``classes``.

    - ``embeddings``: (N, D) features of the labelled images; ``labels[i]`` is image i's label,
      ``{attribute: class}``, with missing attributes simply absent (masked for that head).
    - ``reference``: features to take the standardisation statistics from (default: the
      labelled rows themselves).
    - ``class_weight``: ``None`` or ``"balanced"`` (weights inversely proportional to class
      frequency, for skewed attributes).
    - ``mirrored``: (N, D) embeddings of the same images mirrored left-right; each labelled row
      then also trains its head mirrored, with its class through ``mirror_map[attribute]``
      (an attribute absent from ``mirror_map``, or a class absent from its map, keeps its class:
      colour and type do not change in a mirror). See the module docstring.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected embeddings of shape (N, D), got {x.shape}")
    if len(labels) != len(x):
        raise ValueError(f"{len(labels)} labels for {len(x)} embeddings")
    if class_weight not in (None, "balanced"):
        raise ValueError("class_weight must be None or 'balanced'")
    if mirrored is not None:
        mirrored = np.asarray(mirrored, dtype=np.float32)
        if mirrored.shape != x.shape:
            raise ValueError(f"mirror views {mirrored.shape} do not match the images {x.shape}")
    t0 = time.perf_counter()
    ref = x if reference is None or len(reference) == 0 else np.asarray(reference, np.float32)
    mean, std = _scaling(ref) if len(ref) else (np.zeros(x.shape[1], np.float32),
                                                 np.ones(x.shape[1], np.float32))
    heads: dict[str, HeadFit] = {}
    notes: list[str] = []
    for attr, names in classes.items():
        names = list(names)
        known = set(names)
        rows = [i for i, lab in enumerate(labels) if lab.get(attr) is not None]
        y = [labels[i][attr] for i in rows]
        bad = sorted({v for v in y if v not in known})
        if bad:
            raise ValueError(f"{attr}: labels {bad} are not classes of this head ({names})")
        flips = (mirror_map or {}).get(attr, {})
        if mirrored is not None:   # each row again, mirrored, with its mirrored class
            y_views = y + [flips.get(v, v) for v in y]
            xs = (np.concatenate([x[rows], mirrored[rows]]) - mean) / std
        else:
            y_views = y
            xs = (x[rows] - mean) / std
        seen = [c for c in names if c in set(y_views)]
        if len(seen) < 2:
            heads[attr] = HeadFit(attr, names, seen, np.zeros((0, x.shape[1]), np.float32),
                                  np.zeros(0, np.float32), len(rows), fitted=False)
            notes.append(f"{attr}: {len(seen)} class(es) labelled, head left uniform")
            continue
        clf = LogisticRegression(C=C, max_iter=max_iter, class_weight=class_weight)
        with warnings.catch_warnings(record=True) as caught, threadpool_limits(limits=1):
            warnings.simplefilter("always", ConvergenceWarning)
            clf.fit(xs, np.array([seen.index(v) for v in y_views]))
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            notes.append(f"{attr}: solver stopped at {max_iter} iterations before converging")
        w = clf.coef_.astype(np.float32)
        b = clf.intercept_.astype(np.float32)
        if len(seen) == 2:  # sklearn returns one row for two classes: softmax([0, z]) == sigmoid(z)
            w = np.vstack([np.zeros_like(w), w])
            b = np.array([0.0, b[0]], np.float32)
        # fold the standardisation in: ((x - m) / s) @ w.T + b == x @ (w / s).T + (b - (m / s) @ w.T)
        coef = w / std
        intercept = b - (mean / std) @ w.T
        heads[attr] = HeadFit(attr, names, seen, coef.astype(np.float32),
                              intercept.astype(np.float32), len(rows), fitted=True,
                              mirror=None if mirrored is None else
                              np.array(mirror_permutation(names, flips), dtype=np.int64))
    return HeadsFit(heads, x.shape[1], class_weight, float(C),
                    fit_s=time.perf_counter() - t0, warnings=notes)
