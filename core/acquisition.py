"""Acquisition heuristics: which unlabelled images are most worth labelling next.

Everything here is a small function over probability arrays, with no model, store or file
access, so each one can be checked by hand (tests/test_acquisition.py) and reused by scoring,
the queue, the benchmark and the app alike. Conventions:

- ``probs``: one head's softmax output, shape ``(N, K)``; rows sum to 1.
- ``samples``: ``T`` stochastic (MC-dropout) passes of one head, shape ``(T, N, K)``.
- Every per-head score is an *uncertainty*: higher means "label this first", and each is scaled
  to ``[0, 1]`` (entropy by ``log K``, BALD by ``log K``) so heads with 8 and 10 classes add up
  on the same scale.
- Several heads are combined per image by a weighted mean (``combine_mean``, "sum of entropies
  normalised by log K"), or a weighted max (``combine_max``: an image uncertain on any single
  attribute ranks high). User weights per attribute (e.g. ``orientation=2``) express "focus on
  orientation"; a weight of 0 ignores that head.

Strategies are registered by name in :data:`STRATEGIES` for the CLI and the app. Batches are
drawn from the scores by top-k or by stochastic sampling (:func:`stochastic_batch`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy.special import xlogy

PerHead = Mapping[str, np.ndarray]


# -- per-head uncertainty ----------------------------------------------------------------------
def _check_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"expected probabilities of shape (N, K>=2), got {p.shape}")
    return p


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats, ``-sum p log p`` per row; ``0 log 0`` counts as 0."""
    p = _check_probs(probs)
    return -xlogy(p, p).sum(axis=1)


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy divided by ``log K``: 0 for a one-hot row, 1 for the uniform distribution."""
    p = _check_probs(probs)
    return entropy(p) / math.log(p.shape[1])


def margin(probs: np.ndarray) -> np.ndarray:
    """``1 - (p_top1 - p_top2)``: close to 1 when the two best classes are nearly tied.

    Why not entropy: margin only looks at the decision boundary the label would move, and
    ignores how the remaining mass is spread over unlikely classes.
    """
    p = _check_probs(probs)
    top2 = np.partition(p, -2, axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def least_confidence(probs: np.ndarray) -> np.ndarray:
    """``(1 - p_max) * K / (K - 1)``: 0 when certain, 1 for the uniform distribution."""
    p = _check_probs(probs)
    k = p.shape[1]
    return (1.0 - p.max(axis=1)) * k / (k - 1)


def bald(samples: np.ndarray) -> np.ndarray:
    """BALD mutual information from ``T`` MC-dropout passes, normalised by ``log K``.

    ``I(y; w) = H(mean_t p_t) - mean_t H(p_t)``: high when the passes are each confident but
    disagree (model uncertainty a label can reduce), low when every pass is equally unsure
    (noise a label cannot fix). ``samples`` has shape ``(T, N, K)``.
    """
    s = np.asarray(samples, dtype=np.float64)
    if s.ndim != 3 or s.shape[2] < 2:
        raise ValueError(f"expected MC samples of shape (T, N, K>=2), got {s.shape}")
    mean = s.mean(axis=0)
    predictive = -xlogy(mean, mean).sum(axis=1)
    expected = -xlogy(s, s).sum(axis=2).mean(axis=0)
    return np.clip(predictive - expected, 0.0, None) / math.log(s.shape[2])


PER_HEAD: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "entropy": normalised_entropy,
    "margin": margin,
    "least_confidence": least_confidence,
}
"""Per-head measures computed from a single deterministic pass (BALD needs MC samples)."""


def per_head_scores(probs: PerHead, measure: str) -> dict[str, np.ndarray]:
    """Apply one registered measure to every head: ``{attribute: (N,)}``."""
    if measure not in PER_HEAD:
        raise ValueError(f"unknown measure {measure!r}; choose from {sorted(PER_HEAD)}")
    fn = PER_HEAD[measure]
    return {a: fn(p) for a, p in probs.items()}


# -- combining heads ---------------------------------------------------------------------------
def parse_weights(text: str | None) -> dict[str, float] | None:
    """``"color=1,type=1,orientation=2"`` -> ``{"color": 1.0, ...}``; empty -> None."""
    if text is None or not text.strip():
        return None
    out: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"weight {part!r} must look like attribute=number")
        try:
            w = float(value)
        except ValueError as exc:
            raise ValueError(f"weight for {name.strip()!r} is not a number: {value!r}") from exc
        if w < 0 or not math.isfinite(w):
            raise ValueError(f"weight for {name.strip()!r} must be a finite number >= 0")
        out[name.strip()] = w
    return out or None


def _weights_for(heads: Sequence[str], weights: Mapping[str, float] | None) -> np.ndarray:
    if weights is None:
        return np.ones(len(heads))
    unknown = set(weights) - set(heads)
    if unknown:
        raise ValueError(f"weights name unknown attributes {sorted(unknown)}; heads are {list(heads)}")
    w = np.array([float(weights.get(a, 1.0)) for a in heads])
    if not (w > 0).any():
        raise ValueError("at least one attribute weight must be positive")
    return w


def combine_mean(per_head: PerHead, weights: Mapping[str, float] | None = None) -> np.ndarray:
    """Weighted mean over heads (the "sum of entropies normalised by log K", kept in [0, 1]).

    Heads missing from ``weights`` get weight 1; a weight of 0 drops the head.
    """
    heads = list(per_head)
    w = _weights_for(heads, weights)
    stacked = np.stack([np.asarray(per_head[a], dtype=np.float64) for a in heads])
    return (w[:, None] * stacked).sum(axis=0) / w.sum()


def combine_max(per_head: PerHead, weights: Mapping[str, float] | None = None) -> np.ndarray:
    """Weighted max over heads: an image ranks high when *any* (weighted) head is unsure.

    Weights are rescaled so the largest is 1, keeping the result in [0, 1].
    """
    heads = list(per_head)
    w = _weights_for(heads, weights)
    w = w / w.max()
    stacked = np.stack([np.asarray(per_head[a], dtype=np.float64) for a in heads])
    return (w[:, None] * stacked).max(axis=0)


COMBINERS: dict[str, Callable[[PerHead, Mapping[str, float] | None], np.ndarray]] = {
    "mean": combine_mean,
    "max": combine_max,
}


# -- baseline and class balance ----------------------------------------------------------------
def random_scores(n: int, seed: int = 0) -> np.ndarray:
    """Uniform random scores: ranking by them is the random-sampling baseline."""
    return np.random.default_rng(seed).random(n)


def class_rarity(counts: Mapping[str, int], classes: Sequence[str]) -> np.ndarray:
    """Per-class rarity from labelled counts: ``(n_total + K) / (K * (n_c + 1))``.

    Inverse frequency with add-one smoothing, scaled so that perfectly balanced counts give 1
    for every class; a class nobody has labelled yet gets the highest value.
    """
    k = len(classes)
    n = np.array([float(counts.get(c, 0)) for c in classes])
    return (n.sum() + k) / (k * (n + 1.0))


def expected_rarity(probs: PerHead, rarity: Mapping[str, np.ndarray],
                    weights: Mapping[str, float] | None = None) -> np.ndarray:
    """Per image, the weighted mean over heads of ``sum_c p_c * rarity_c``.

    Using the full probability vector (not only the argmax) lets an image that is 40 % "bus"
    count as a likely rare-class example.
    """
    heads = [a for a in probs if a in rarity]
    if not heads:
        raise ValueError("no head has rarity values")
    w = _weights_for(heads, {a: v for a, v in (weights or {}).items() if a in heads} or None)
    per = np.stack([np.asarray(probs[a], dtype=np.float64) @ np.asarray(rarity[a]) for a in heads])
    return (w[:, None] * per).sum(axis=0) / w.sum()


def apply_balance(scores: np.ndarray, rarity_factor: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Multiply scores by ``rarity_factor ** strength`` (0 = no effect).

    Multiplying rather than adding keeps a confident image at the bottom even if it is
    predicted to be rare: balance re-orders among uncertain images.
    """
    return np.asarray(scores, dtype=np.float64) * np.power(np.asarray(rarity_factor), strength)


# -- stochastic batches ------------------------------------------------------------------------
SAMPLING: tuple[str, ...] = ("topk", "power", "softmax", "softrank")
"""How a batch is drawn from the scores: plain top-k, or one of Kirsch et al.'s samplers."""


def stochastic_batch(scores: np.ndarray, k: int, *, mode: str = "power", beta: float = 1.0,
                     seed: int = 0) -> np.ndarray:
    """Draw ``k`` indices without replacement, favouring high scores; returns them in draw order.

    Stochastic batch acquisition (Kirsch, Farquhar, Atighehchian, Jesson, Branchaud-Charron &
    Gal, "Stochastic Batch Acquisition: A Simple Baseline for Deep Active Learning", TMLR 2023):
    top-k of a single score ignores that the scores of a batch's members interact (near
    duplicates rank together), and sampling ``p_i ∝ s_i^beta`` is as good as far costlier
    batch-aware methods. Sampling without replacement is done with the Gumbel-top-k trick:
    ``argsort(log p_i + G_i)`` with i.i.d. standard Gumbel ``G_i``.

    - ``power``: ``p ∝ s^beta`` (the paper's recommended default, ``beta=1``);
    - ``softmax``: ``p ∝ exp(beta * s)``;
    - ``softrank``: ``p ∝ rank^-beta`` (only the order of the scores matters);
    - ``topk``: the deterministic top-k (no sampling), for comparison.

    ``beta -> inf`` approaches top-k; ``beta = 0`` is uniform random. The same ``seed`` gives
    the same batch. ``scores`` has shape ``(N,)``; ties in ``topk`` keep index order.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"expected scores of shape (N,), got {s.shape}")
    if mode not in SAMPLING:
        raise ValueError(f"unknown sampling {mode!r}; choose from {', '.join(SAMPLING)}")
    if beta < 0 or not math.isfinite(beta):
        raise ValueError("beta must be a finite number >= 0")
    k = min(int(k), len(s))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if mode == "topk":
        return np.argsort(-s, kind="stable")[:k].astype(np.int64)
    if mode == "power":
        # a score of 0 gets a vanishing (not -inf) probability, so zeros still come last in
        # random order rather than in index order
        logp = beta * np.log(np.clip(s, 1e-300, None))
    elif mode == "softmax":
        logp = beta * s
    else:  # softrank: rank 1 is the highest score
        ranks = np.empty(len(s))
        ranks[np.argsort(-s, kind="stable")] = np.arange(1, len(s) + 1)
        logp = -beta * np.log(ranks)
    gumbel = np.random.default_rng(seed).gumbel(size=len(s))
    keys = logp + gumbel
    return np.argsort(-keys, kind="stable")[:k].astype(np.int64)


# -- strategies --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Strategy:
    """A named acquisition rule the CLI and the app can offer.

    ``kind`` says what a strategy ranks with:
    - ``uncertainty``: a model's per-head scores (``measure``), combined over heads;
    - ``random``: nothing (the baseline);
    - ``typicality``: pretrained-backbone embeddings of the pool (no trained model needed);
    - ``auto``: picks typicality or uncertainty per batch (see :mod:`core.selection`).
    """

    name: str
    measure: str | None          # per-head measure name, "bald", or None
    combine: str = "mean"        # how heads are combined
    description: str = ""
    kind: str = "uncertainty"

    @property
    def needs_model(self) -> bool:
        return self.kind == "uncertainty"

    @property
    def needs_mc(self) -> bool:
        return self.measure == "bald"

    @property
    def needs_embeddings(self) -> bool:
        """Needs the pool's pretrained-backbone embeddings (see core/embeddings.py)."""
        return self.kind in ("typicality", "auto")


def uncertainty_per_head(probs: PerHead, mc_samples: PerHead | None = None,
                         ) -> dict[str, dict[str, np.ndarray]]:
    """Every per-head measure: ``{measure: {attribute: (N,)}}``; BALD only with MC samples.

    The one place per-head scores are computed: pool scoring stores this, and the queue, the
    store rows and the tests all read from it.
    """
    out = {m: per_head_scores(probs, m) for m in PER_HEAD}
    if mc_samples is not None:
        out["bald"] = {a: bald(s) for a, s in mc_samples.items()}
    return out


def strategy_scores(strategy: Strategy, per_head: Mapping[str, PerHead],
                    weights: Mapping[str, float] | None = None) -> np.ndarray:
    """One score per image (higher = label first) for an uncertainty strategy.

    ``per_head`` is ``{measure: {attribute: (N,)}}`` as :func:`uncertainty_per_head` returns
    (and pool scoring stores). A measure that was not computed (BALD without MC passes) is an
    error, never a silent zero.
    """
    if strategy.kind != "uncertainty" or strategy.measure is None:
        raise ValueError(f"strategy {strategy.name!r} does not rank by uncertainty scores")
    if strategy.measure not in per_head:
        need = " (it needs MC-dropout passes)" if strategy.needs_mc else ""
        raise ValueError(f"the scores have no {strategy.measure!r} values{need}")
    return COMBINERS[strategy.combine](per_head[strategy.measure], weights)


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("auto", None, kind="auto",
             description="typicality while labels are few or the model cannot rank yet, "
                         "then entropy with stochastic sampling and core-set diversity"),
    Strategy("random", None, kind="random", description="uniform random baseline"),
    Strategy("typiclust", None, kind="typicality",
             description="most typical image of each uncovered k-means cluster of pretrained "
                         "embeddings (TypiClust; cold start, no model needed)"),
    Strategy("probcover", None, kind="typicality",
             description="greedy max coverage of delta-balls in pretrained embedding space "
                         "(ProbCover; cold start, no model needed)"),
    Strategy("entropy", "entropy", "mean",
             "mean over heads of entropy / log K (sum of normalised entropies)"),
    Strategy("entropy-max", "entropy", "max", "max over heads of entropy / log K"),
    Strategy("margin", "margin", "mean", "mean over heads of 1 - (p1 - p2)"),
    Strategy("margin-max", "margin", "max", "max over heads of 1 - (p1 - p2)"),
    Strategy("least-confidence", "least_confidence", "mean",
             "mean over heads of (1 - p_max) scaled to [0, 1]"),
    Strategy("bald", "bald", "mean", "MC-dropout mutual information, mean over heads"),
    Strategy("bald-max", "bald", "max", "MC-dropout mutual information, max over heads"),
)}
"""Strategy name -> :class:`Strategy`. Diversity, sampling and class balance are options on top."""


def get_strategy(name: str) -> Strategy:
    """Look up a strategy by name with a readable error listing the choices."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}") from None


def score_name(measure: str, attribute: str | None = None) -> str:
    """The name a score is stored under: ``entropy:color`` per head, ``entropy`` combined."""
    return measure if attribute is None else f"{measure}:{attribute}"
