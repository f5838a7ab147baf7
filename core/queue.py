"""The labeling queue: the next K images to label, ranked by an acquisition strategy.

:func:`build_queue` is what the CLI (``python -m core rank``), the app and the round loop call.
It takes the current model's saved pool scores (scoring the pool first when they are missing or
do not cover every candidate), applies the strategy, optional head weights, class balance and
diversity, and records the batch as the next round, so the labeling page and the CVAT push read
the same list.

Candidates are unlabelled images outside the test split that no earlier round has queued:
the test split stays a fixed unbiased sample (round 0), and an image already waiting in a
batch is not offered twice.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from core import acquisition as acq
from core.diversity import METHODS as DIVERSITY_METHODS
from core.diversity import select_diverse
from data.errors import UserError
from data.workspace import Workspace

Progress = Callable[[float, str], None]
ROUND_KIND = "al"
EXCLUDED_SPLITS = ("test",)


@dataclass
class QueueItem:
    """One queued image as the UI shows it."""

    image_id: int
    rank: int
    score: float
    name: str
    path: str
    split: str
    predictions: dict[str, tuple[str, float]] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)   # e.g. {"entropy:color": 0.7}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class QueueResult:
    """The ranked batch, the round it was recorded as (None for a preview) and how it was made."""

    items: list[QueueItem]
    round_number: int | None
    strategy: str
    params: dict[str, Any]
    model_id: int | None
    candidates: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def image_ids(self) -> list[int]:
        return [it.image_id for it in self.items]


def candidate_ids(ws: Workspace) -> list[int]:
    """Unlabelled, not yet queued images outside the test split and the evaluation set."""
    with ws.store() as store:
        evaluation = set(store.eval_set_ids())   # test-split already; kept out explicitly too
        return [i for i in store.unlabelled_ids(exclude_splits=EXCLUDED_SPLITS, exclude_queued=True)
                if i not in evaluation]


def label_counts(ws: Workspace) -> dict[str, dict[str, int]]:
    """{attribute: {class: n}} over current labels outside the test split (what training sees)."""
    with ws.store() as store:
        test = {r.id for r in store.images(split="test")}
        labels = store.current_labels()
    counts: dict[str, dict[str, int]] = {}
    for image_id, values in labels.items():
        if image_id in test:
            continue
        for a, v in values.items():
            counts.setdefault(a, {})
            counts[a][v] = counts[a].get(v, 0) + 1
    return counts


def rank_scores(strategy: acq.Strategy, pool: "PoolScores | None", n: int, *,  # noqa: F821
                weights: Mapping[str, float] | None = None, seed: int = 0) -> np.ndarray:
    """One score per candidate (higher = label first) from saved pool scores."""
    if strategy.measure is None:
        return acq.random_scores(n, seed)
    assert pool is not None
    per = pool.per_head(strategy.measure)
    return acq.COMBINERS[strategy.combine](per, weights)


def select(scores: np.ndarray, top_k: int, *, embeddings: np.ndarray | None = None,
           diversity: str | None = None, pool_factor: float = 4.0, seed: int = 0) -> np.ndarray:
    """Row indices of the batch, most uncertain first (top-k, or the diverse subset)."""
    k = min(int(top_k), len(scores))
    if diversity:
        if embeddings is None:
            raise UserError("diversity needs embeddings from a scored model")
        return select_diverse(scores, embeddings, k, method=diversity, pool_factor=pool_factor,
                              seed=seed)
    return np.argsort(-scores, kind="stable")[:k]


def _load_or_score(ws: Workspace, model_id: int, candidates: Sequence[int], *, rescore: bool,
                   progress: Progress | None, should_cancel: Callable[[], bool] | None,
                   score_kwargs: Mapping[str, Any]):
    from core.scoring import pool_scores_for, score_pool

    pool = None if rescore else pool_scores_for(ws, model_id)
    if pool is not None and pool.model_id == model_id:
        index = {int(i): r for r, i in enumerate(pool.image_ids)}
        if all(int(c) in index for c in candidates):
            return pool.subset([index[int(c)] for c in candidates]), False
    pool = score_pool(ws, model_id, progress=progress, should_cancel=should_cancel,
                      **dict(score_kwargs))
    index = {int(i): r for r, i in enumerate(pool.image_ids)}
    missing = [c for c in candidates if int(c) not in index]
    if missing:
        raise UserError(f"{len(missing)} candidate images have no cached pixels; re-ingest them")
    return pool.subset([index[int(c)] for c in candidates]), True


def build_queue(ws: Workspace, strategy: str = "entropy", top_k: int = 200,
                weights: Mapping[str, float] | None = None, diversity: str | bool | None = None,
                balance: bool = False, *, balance_strength: float = 1.0, pool_factor: float = 4.0,
                seed: int = 0, model_id: int | None = None, record: bool = True,
                rescore: bool = False, progress: Progress | None = None,
                should_cancel: Callable[[], bool] | None = None,
                score_kwargs: Mapping[str, Any] | None = None) -> QueueResult:
    """Rank the candidates and (with ``record``) save the batch as the next round.

    - ``strategy``: a name from :data:`core.acquisition.STRATEGIES` (``random`` needs no model).
    - ``weights``: per-attribute weights, e.g. ``{"orientation": 2}`` to focus on orientation.
    - ``diversity``: ``"kcenter"`` or ``"kmeans"`` (``True`` means kcenter): pre-select
      ``pool_factor * top_k`` most uncertain, then spread the batch over embedding space.
    - ``balance``: favour images predicted to be in classes rare among the current labels.
    - ``record=False`` previews the batch without creating a round.
    - ``progress(fraction, message)`` and ``should_cancel()`` are passed to pool scoring when
      the saved scores are missing or stale (the only slow step).
    """
    t0 = time.perf_counter()
    try:
        strat = acq.get_strategy(strategy)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if top_k < 1:
        raise UserError("the batch size (--top) must be at least 1")
    if diversity is True:
        diversity = "kcenter"
    if diversity and diversity not in DIVERSITY_METHODS:
        raise UserError(f"unknown diversity method {diversity!r}; use {', '.join(DIVERSITY_METHODS)}")
    diversity = diversity or None
    candidates = candidate_ids(ws)
    if not candidates:
        raise UserError("no unlabelled images left to queue (outside the test split)")

    with ws.store() as store:
        current = store.current_model() if model_id is None else {"id": model_id}
    needs_model = strat.needs_model or diversity is not None or balance
    if needs_model and current is None:
        raise UserError(f"strategy {strategy!r}{' with diversity/balance' if strat.measure is None else ''}"
                        " needs a trained model; train one first or use --strategy random")
    pool = None
    scored_now = False
    if current is not None:
        pool, scored_now = _load_or_score(ws, int(current["id"]), candidates, rescore=rescore,
                                          progress=progress, should_cancel=should_cancel,
                                          score_kwargs=score_kwargs or {})
    t_scores = time.perf_counter()

    attrs = pool.attributes if pool is not None else list(ws.schema.attributes)
    if weights:
        unknown = set(weights) - set(attrs)
        if unknown:
            raise UserError(f"weights name unknown attributes {sorted(unknown)}; heads are {attrs}")
    rarity_info: dict[str, Any] | None = None
    try:
        scores = rank_scores(strat, pool, len(candidates), weights=weights, seed=seed)
        if balance:
            counts = label_counts(ws)
            rarity = {a: acq.class_rarity(counts.get(a, {}), pool.class_names[a]) for a in attrs}
            factor = acq.expected_rarity(pool.probs, rarity, weights)
            scores = acq.apply_balance(scores, factor, balance_strength)
            rarity_info = {a: dict(zip(pool.class_names[a], np.round(r, 3).tolist()))
                           for a, r in rarity.items()}
    except ValueError as exc:  # bad weights (all zero, ...) are the user's to fix
        raise UserError(str(exc)) from None
    picked = select(scores, top_k, embeddings=None if pool is None else pool.embeddings,
                    diversity=diversity, pool_factor=pool_factor, seed=seed)
    t_select = time.perf_counter()

    ids = [int(candidates[i]) for i in picked]
    with ws.store() as store:
        records = {r.id: r for r in store.images(ids)}
    per_head: dict[str, dict[str, np.ndarray]] = {}
    if pool is not None:
        for measure in ("entropy", "margin", "least_confidence", "bald"):
            per_head[measure] = pool.per_head(measure)
    items: list[QueueItem] = []
    for rank, row in enumerate(picked):
        rec = records[ids[rank]]
        preds: dict[str, tuple[str, float]] = {}
        head_scores: dict[str, float] = {}
        if pool is not None:
            for a in attrs:
                p = pool.probs[a][row]
                k = int(np.argmax(p))
                preds[a] = (pool.class_names[a][k], float(p[k]))
                for measure, per in per_head.items():
                    head_scores[acq.score_name(measure, a)] = float(per[a][row])
        items.append(QueueItem(image_id=ids[rank], rank=rank, score=float(scores[row]),
                               name=rec.name, path=rec.path, split=rec.split,
                               predictions=preds, scores=head_scores))

    params: dict[str, Any] = {
        "top_k": int(top_k), "weights": dict(weights) if weights else None,
        "diversity": diversity, "pool_factor": pool_factor if diversity else None,
        "balance": bool(balance), "balance_strength": balance_strength if balance else None,
        "combine": strat.combine if strat.measure else None, "seed": seed,
        "candidates": len(candidates), "backend": pool.backend if pool is not None else None,
    }
    if rarity_info is not None:
        params["rarity"] = rarity_info
    model = None if current is None else int(current["id"])
    number = None
    if record:
        with ws.store() as store:
            number = store.create_round(ids, kind=ROUND_KIND, strategy=strat.name,
                                        scores=[it.score for it in items], params=params,
                                        model_id=model)
    t_end = time.perf_counter()
    timings = {"scores_s": t_scores - t0, "scored_now": float(scored_now),
               "select_s": t_select - t_scores, "record_s": t_end - t_select,
               "total_s": t_end - t0}
    return QueueResult(items=items, round_number=number, strategy=strat.name, params=params,
                       model_id=model, candidates=len(candidates), timings=timings)


def queue_items(ws: Workspace, round_number: int | None = None) -> list[QueueItem]:
    """The stored batch of a round (default: the latest) with the model's predictions, for the UI."""
    with ws.store() as store:
        rnd = store.round(round_number) if round_number is not None else store.latest_round()
        if rnd is None:
            return []
        items = store.round_items(int(rnd["number"]))
        ids = [int(it["image_id"]) for it in items]
        records = {r.id: r for r in store.images(ids)}
        preds = store.predictions(int(rnd["model_id"]), ids) if rnd.get("model_id") else {}
    return [QueueItem(image_id=i, rank=int(it["rank"]),
                      score=float(it["score"]) if it["score"] is not None else float("nan"),
                      name=records[i].name, path=records[i].path, split=records[i].split,
                      predictions=preds.get(i, {}))
            for it, i in zip(items, ids)]
