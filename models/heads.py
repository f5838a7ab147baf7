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

    def predict_proba(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """{attribute: (N, K)} for embeddings ``x`` of shape (N, D)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise ValueError(f"expected embeddings of shape (N, {self.feature_dim}), got {x.shape}")
        return {a: h.predict_proba(x) for a, h in self.heads.items()}

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
              max_iter: int = DEFAULT_MAX_ITER) -> HeadsFit:
    """Fit one multinomial logistic regression per attribute of ``classes``.

    - ``embeddings``: (N, D) features of the labelled images; ``labels[i]`` is image i's label,
      ``{attribute: class}``, with missing attributes simply absent (masked for that head).
    - ``reference``: features to take the standardisation statistics from (default: the
      labelled rows themselves).
    - ``class_weight``: ``None`` or ``"balanced"`` (weights inversely proportional to class
      frequency, for skewed attributes).
    """
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected embeddings of shape (N, D), got {x.shape}")
    if len(labels) != len(x):
        raise ValueError(f"{len(labels)} labels for {len(x)} embeddings")
    if class_weight not in (None, "balanced"):
        raise ValueError("class_weight must be None or 'balanced'")
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
        seen = [c for c in names if c in set(y)]
        if len(seen) < 2:
            heads[attr] = HeadFit(attr, names, seen, np.zeros((0, x.shape[1]), np.float32),
                                  np.zeros(0, np.float32), len(rows), fitted=False)
            notes.append(f"{attr}: {len(seen)} class(es) labelled, head left uniform")
            continue
        xs = (x[rows] - mean) / std
        clf = LogisticRegression(C=C, max_iter=max_iter, class_weight=class_weight)
        with warnings.catch_warnings(record=True) as caught, threadpool_limits(limits=1):
            warnings.simplefilter("always", ConvergenceWarning)
            clf.fit(xs, np.array([seen.index(v) for v in y]))
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
                              intercept.astype(np.float32), len(rows), fitted=True)
    return HeadsFit(heads, x.shape[1], class_weight, float(C),
                    fit_s=time.perf_counter() - t0, warnings=notes)
