"""The labeling queue: the next K images to label, ranked by an acquisition strategy.

:func:`build_queue` is what the CLI (``python -m core rank``), the app and the round loop call.
It takes the current model's saved pool scores (scoring the pool first when they are missing or
do not cover every candidate), applies the strategy, optional head weights, class balance and
diversity, and records the batch as the next round, so the labeling page and the CVAT push read
the same list.

Candidates are unlabelled images of the train split that no earlier round has queued: the
test split stays a fixed unbiased sample (round 0), the validation split is never pulled towards
hard examples (it decides early stopping, so it must look like the pool), and an image already
waiting in a batch is not offered twice. Images already labelled or queued count as covered:
typicality skips their clusters and the core-set treats them as existing centres.

Strategies by kind (core/acquisition.py): ``uncertainty`` ranks the model's saved pool scores,
then draws the batch by top-k or stochastic sampling, optionally spread by diversity;
``typicality`` (TypiClust, ProbCover) runs on pretrained-backbone embeddings and needs no model;
``auto`` picks one of the two per batch (core/selection.py) and records why.

Concurrency: scoring is slow and runs without a lock. The picked batch is then checked and
recorded in one IMMEDIATE transaction (:func:`_record`): an image that another round or a label
took since the candidates were read is dropped and the batch re-selected under the same lock,
so two rounds never share an image. The check is an indexed look-up of the K picks, so
recording costs the same at 10k or 1M images. Everything a re-pick needs (scores, embeddings,
the covered set) is loaded before the transaction opens: a re-pick is arithmetic over candidate
rows and reads no file while it holds the write lock.

The read-only queries (candidates, covered images, label counts, stored batches, ``auto``'s
reason) live in :mod:`core.queue_view`, which does not import torch; they are re-exported here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from core import acquisition as acq
from core import typicality as typ
from core.diversity import METHODS as DIVERSITY_METHODS
from core.diversity import select_diverse
from core.embeddings import PoolEmbeddings, pool_embeddings
from core.queue_view import (EXCLUDED_SPLITS, QueueItem, auto_reason,  # noqa: F401 - re-exported
                             candidate_ids, covered_ids, label_counts, queue_items, round_reason,
                             training_label_count)
from core.scoring import (DEFAULT_MC_PASSES, MissingMeasure, PoolScores, ScoringError,
                          model_embeddings, pool_scores_for, score_pool)
from core.selection import choose_auto
from data.errors import UserError
from data.progress import CancelFn, ProgressFn
from data.workspace import Workspace

ROUND_KIND = "al"


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
    reason: str = ""                 # why ``auto`` chose what it ran (empty otherwise)
    notes: list[str] = field(default_factory=list)   # things the user should read (rescored, ...)

    @property
    def image_ids(self) -> list[int]:
        return [it.image_id for it in self.items]


def rank_scores(strategy: acq.Strategy, pool: PoolScores | None, n: int, *,
                weights: Mapping[str, float] | None = None, seed: int = 0) -> np.ndarray:
    """One score per candidate (higher = label first) from saved pool scores."""
    if strategy.kind == "random":
        return acq.random_scores(n, seed)
    if pool is None:
        raise UserError(f"strategy {strategy.name!r} needs a scored model")
    return acq.strategy_scores(strategy, pool.uncertainty, weights)


def select(scores: np.ndarray, top_k: int, *, embeddings: np.ndarray | None = None,
           diversity: str | None = None, pool_factor: float = 4.0, sampling: str = "topk",
           beta: float = 1.0, existing: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Row indices of the batch, highest score first.

    The batch (or, with diversity, the ``pool_factor * top_k`` pre-selection) is drawn by
    ``sampling``: top-k or a stochastic sampler (:func:`core.acquisition.stochastic_batch`).
    Diversity then keeps ``top_k`` of the pre-selection that cover it, with ``existing``
    (labelled and queued images) counted as centres already chosen.
    """
    s = np.asarray(scores, dtype=np.float64)
    k = min(int(top_k), len(s))
    if diversity:
        if embeddings is None:
            raise UserError("diversity needs embeddings from a scored model")
        m = min(len(s), max(k, int(round(pool_factor * k))))
        pre = acq.stochastic_batch(s, m, mode=sampling, beta=beta, seed=seed)
        return select_diverse(s, embeddings, k, method=diversity, existing=existing,
                              preselected=pre, seed=seed)
    picked = acq.stochastic_batch(s, k, mode=sampling, beta=beta, seed=seed)
    return picked[np.argsort(-s[picked], kind="stable")]


def _load_or_score(ws: Workspace, model_id: int, candidates: Sequence[int], *, rescore: bool,
                   needs: str | None, progress: ProgressFn | None,
                   should_cancel: CancelFn | None,
                   score_kwargs: Mapping[str, Any]) -> tuple[PoolScores, bool, str | None]:
    """Saved scores for the candidates, scoring again when they are missing, stale, or lack the
    measure ``needs`` (BALD from a pass without MC-dropout). Returns (scores, scored_now, note)."""
    kwargs = dict(score_kwargs)
    note = None
    pool = None if rescore else pool_scores_for(ws, model_id)
    if pool is not None and pool.model_id == model_id:
        index = {int(i): r for r, i in enumerate(pool.image_ids)}
        if needs is not None and needs not in pool.measures:
            note = (f"the saved scores have no {needs} (scored with --mc-passes 0); "
                    "scored the pool again with MC-dropout")
        elif all(int(c) in index for c in candidates):
            return pool.subset([index[int(c)] for c in candidates]), False, None
    if needs == "bald":
        passes = int(kwargs.get("mc_passes", DEFAULT_MC_PASSES))
        if passes <= 0:
            raise UserError("BALD needs MC-dropout passes; score with --mc-passes above 0 "
                            "or choose another strategy")
        kwargs["mc_passes"] = passes
    try:
        pool = score_pool(ws, model_id, progress=progress, should_cancel=should_cancel, **kwargs)
    except ScoringError as exc:
        raise UserError(str(exc)) from None
    index = {int(i): r for r, i in enumerate(pool.image_ids)}
    missing = [c for c in candidates if int(c) not in index]
    if missing:
        raise UserError(f"{len(missing)} candidate images have no cached pixels; re-ingest them")
    return pool.subset([index[int(c)] for c in candidates]), True, note


@dataclass
class _TypicalityInput:
    """Everything typicality selection needs, loaded once before the write transaction."""

    candidates: np.ndarray          # (n, D) embeddings of the candidates, candidate order
    labelled: np.ndarray | None     # embeddings of the covered images (labelled or queued)
    info: dict[str, Any]
    notes: list[str]


def _typicality_input(ws: Workspace, candidates: Sequence[int], *, backbone: str | None,
                      progress: ProgressFn | None) -> _TypicalityInput:
    """Load (or compute) the pool's pretrained embeddings and take the candidates' and the
    covered images' rows. Slow the first time; runs outside any transaction."""
    try:
        emb: PoolEmbeddings = pool_embeddings(ws, backbone, progress=progress)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    known = set(emb.ids.tolist())
    covered = [i for i in covered_ids(ws) if i in known]
    try:
        cand = emb.take(candidates)
    except KeyError:
        raise UserError("some candidate images have no cached pixels; re-ingest them") from None
    info: dict[str, Any] = {"backbone": emb.backbone, "origin": emb.origin.kind,
                            "origin_detail": emb.origin.detail, "embedded_now": emb.computed,
                            "covered": len(covered)}
    notes = [] if emb.pretrained else [
        f"the embeddings come from a random-init {emb.backbone} (no pretrained weights could "
        "be loaded), so this selection is close to random"]
    return _TypicalityInput(cand, emb.take(covered) if covered else None, info, notes)


def _typicality_select(ws: Workspace, name: str, data: _TypicalityInput, rows: np.ndarray,
                       top_k: int, *, seed: int) -> np.ndarray:
    """TypiClust or ProbCover over candidate rows ``rows`` (arrays only, no I/O); returns
    candidate row indices in pick order."""
    cand = data.candidates[rows]
    lab = data.labelled
    if name == "probcover":
        n_classes = max(ws.schema.num_classes(a) for a in ws.schema.attributes)
        everything = cand if lab is None else np.concatenate([lab, cand])
        delta = typ.choose_delta(everything, n_classes, seed=seed)
        data.info.setdefault("delta", round(delta, 4))
        picks = typ.probcover(cand, top_k, labelled=lab, delta=delta, seed=seed)
    else:
        picks = typ.typiclust(cand, top_k, labelled=lab, seed=seed)
    return rows[np.asarray(picks, dtype=np.int64)]


def build_queue(ws: Workspace, strategy: str = "entropy", top_k: int = 200,
                weights: Mapping[str, float] | None = None, diversity: str | bool | None = None,
                balance: bool = False, *, balance_strength: float = 1.0, pool_factor: float = 4.0,
                sampling: str | None = None, beta: float = 1.0, backbone: str | None = None,
                seed: int = 0, model_id: int | None = None, record: bool = True,
                rescore: bool = False, progress: ProgressFn | None = None,
                should_cancel: CancelFn | None = None,
                score_kwargs: Mapping[str, Any] | None = None) -> QueueResult:
    """Rank the candidates and (with ``record``) save the batch as the next round.

    - ``strategy``: a name from :data:`core.acquisition.STRATEGIES`; ``random``, ``typiclust``,
      ``probcover`` and ``auto`` work without a trained model.
    - ``weights``: per-attribute weights, e.g. ``{"orientation": 2}`` to focus on orientation.
    - ``diversity``: ``"kcenter"`` or ``"kmeans"`` (``True`` means kcenter): pre-select
      ``pool_factor * top_k`` by score, then spread the batch over embedding space, counting
      the labelled and queued images as centres.
    - ``sampling``: ``topk`` (default) or ``power``/``softmax``/``softrank`` with ``beta``
      (stochastic batch acquisition, seeded by ``seed``); ``auto`` uses ``power``.
    - ``backbone``: the pretrained backbone whose embeddings typicality uses.
    - ``balance``: favour images predicted to be in classes rare among the current labels.
    - ``record=False`` previews the batch without creating a round.
    - ``progress(Progress)`` (see :mod:`data.progress`) and ``should_cancel()`` are passed to pool scoring when
      the saved scores are missing, stale or lack a needed measure (the only slow step).
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
    if sampling is not None and sampling not in acq.SAMPLING:
        raise UserError(f"unknown sampling {sampling!r}; use {', '.join(acq.SAMPLING)}")
    candidates = candidate_ids(ws)
    if not candidates:
        raise UserError("no unlabelled images left to queue (outside the validation and test splits)")

    with ws.store() as store:
        current = store.current_model() if model_id is None else {"id": model_id}
    score_kwargs = score_kwargs or {}
    notes: list[str] = []
    reason = ""
    pool: PoolScores | None = None
    scored_now = False
    n_labels = training_label_count(ws)
    if strat.kind == "auto":
        choice = choose_auto(n_labels, current is not None)
        if choice.strategy != "typiclust" and current is not None:
            pool, scored_now, note = _load_or_score(
                ws, int(current["id"]), candidates, rescore=rescore, needs=None,
                progress=progress, should_cancel=should_cancel, score_kwargs=score_kwargs)
            notes += [note] if note else []
            mean_h = float(acq.combine_mean(pool.per_head("entropy")).mean())
            choice = choose_auto(n_labels, True, mean_h)
        reason = choice.reason
        run = acq.get_strategy(choice.strategy)
        sampling = sampling or choice.sampling
        diversity = diversity or choice.diversity
        if run.kind == "typicality":
            balance, weights, diversity = False, None, None
    else:
        run = strat
    sampling = sampling or "topk"
    needs_model = run.needs_model or (run.kind == "random" and (diversity is not None or balance))
    if needs_model and current is None:
        raise UserError(f"strategy {strategy!r}{' with diversity/balance' if run.kind == 'random' else ''}"
                        " needs a trained model; train one first or use --strategy typiclust, "
                        "auto or random")
    if run.kind == "typicality" and (balance or diversity):
        raise UserError(f"{run.name} spreads the batch itself and needs no model; drop "
                        "--diversity and --balance")
    if run.kind != "typicality" and current is not None and pool is None:
        pool, scored_now, note = _load_or_score(
            ws, int(current["id"]), candidates, rescore=rescore,
            needs=run.measure if run.kind == "uncertainty" else None, progress=progress,
            should_cancel=should_cancel, score_kwargs=score_kwargs)
        notes += [note] if note else []
    t_scores = time.perf_counter()

    attrs = pool.attributes if pool is not None else list(ws.schema.attributes)
    if weights:
        unknown = set(weights) - set(attrs)
        if unknown:
            raise UserError(f"weights name unknown attributes {sorted(unknown)}; heads are {attrs}")
    rarity_info: dict[str, Any] | None = None
    embed_info: dict[str, Any] | None = None
    if run.kind == "typicality":
        typ_input = _typicality_input(ws, candidates, backbone=backbone, progress=progress)
        embed_info = typ_input.info
        notes += typ_input.notes
        scores = np.full(len(candidates), np.nan)

        def pick(rows: np.ndarray) -> np.ndarray:
            """Select among candidate rows ``rows`` from the embeddings loaded above: a re-pick
            inside the recording transaction (after a race lost some picks) reads no file."""
            return _typicality_select(ws, run.name, typ_input, rows, top_k, seed=seed)

        first = pick(np.arange(len(candidates)))
    else:
        try:
            scores = rank_scores(run, pool, len(candidates), weights=weights, seed=seed)
            if balance:
                counts = label_counts(ws)
                rarity = {a: acq.class_rarity(counts.get(a, {}), pool.class_names[a]) for a in attrs}
                factor = acq.expected_rarity(pool.probs, rarity, weights)
                scores = acq.apply_balance(scores, factor, balance_strength)
                rarity_info = {a: dict(zip(pool.class_names[a], np.round(r, 3).tolist()))
                               for a, r in rarity.items()}
        except (ValueError, MissingMeasure) as exc:  # bad weights are the user's to fix
            raise UserError(str(exc)) from None
        existing = None
        if diversity is not None:
            covered = covered_ids(ws)
            if covered:
                try:
                    existing = model_embeddings(ws, int(current["id"]), covered,
                                                threads=score_kwargs.get("threads"))
                except ScoringError as exc:
                    raise UserError(str(exc)) from None
        embeddings = None if pool is None else pool.embeddings

        def pick(rows: np.ndarray) -> np.ndarray:
            """Select the batch among candidate rows ``rows``; returns candidate row indices."""
            sub = select(scores[rows], top_k,
                         embeddings=None if embeddings is None else embeddings[rows],
                         diversity=diversity, pool_factor=pool_factor, sampling=sampling,
                         beta=beta, existing=existing, seed=seed)
            return rows[sub]

        first = pick(np.arange(len(candidates)))
    picked = np.asarray(first)
    t_select = time.perf_counter()

    params: dict[str, Any] = {
        "top_k": int(top_k), "weights": dict(weights) if weights else None,
        "diversity": diversity, "pool_factor": pool_factor if diversity else None,
        "sampling": sampling if run.kind == "uncertainty" else None,
        "beta": beta if run.kind == "uncertainty" and sampling != "topk" else None,
        "balance": bool(balance), "balance_strength": balance_strength if balance else None,
        "combine": run.combine if run.kind == "uncertainty" else None, "seed": seed,
        "candidates": len(candidates), "backend": pool.backend if pool is not None else None,
        "labels": n_labels,
    }
    if strat.kind == "auto":
        params["auto"] = {"chose": run.name, "reason": reason}
    if embed_info is not None:
        params["embeddings"] = embed_info
    if rarity_info is not None:
        params["rarity"] = rarity_info
    model = None if current is None else int(current["id"])
    number = None
    if record:
        picked, number = _record(ws, candidates, picked, pick, kind=ROUND_KIND,
                                 strategy=strat.name, scores=scores, params=params,
                                 model_id=model, store_scores=run.kind != "typicality")
    t_record = time.perf_counter()

    ids = [int(candidates[i]) for i in picked]
    with ws.store() as store:
        records = {r.id: r for r in store.images(ids)}
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
                for measure, per in pool.uncertainty.items():
                    head_scores[acq.score_name(measure, a)] = float(per[a][row])
        items.append(QueueItem(image_id=ids[rank], rank=rank, score=float(scores[row]),
                               name=rec.name, path=rec.path, split=rec.split,
                               predictions=preds, scores=head_scores))

    t_end = time.perf_counter()
    timings = {"scores_s": t_scores - t0, "scored_now": float(scored_now),
               "select_s": t_select - t_scores, "record_s": t_record - t_select,
               "total_s": t_end - t0}
    return QueueResult(items=items, round_number=number, strategy=strat.name, params=params,
                       model_id=model, candidates=len(candidates), timings=timings,
                       reason=reason, notes=notes)


def _record(ws: Workspace, candidates: Sequence[int], picked: np.ndarray,
            pick: Callable[[np.ndarray], np.ndarray], *, kind: str, strategy: str,
            scores: np.ndarray, params: Mapping[str, Any],
            model_id: int | None, store_scores: bool = True) -> tuple[np.ndarray, int]:
    """Check the picks and record them as the next round, in one IMMEDIATE transaction.

    Picks that another process queued or labelled after ``candidates`` were read are dropped
    and the batch is picked again (under the same lock) from the remaining candidates.
    Returns the final picks and the round number.
    """
    alive = np.ones(len(candidates), dtype=bool)
    with ws.store() as store, store.transaction():
        while True:
            taken = store.taken_ids(int(candidates[i]) for i in picked)
            if not taken:
                break
            alive &= ~np.isin(np.asarray(candidates), list(taken))
            rows = np.flatnonzero(alive)
            if rows.size == 0:
                raise UserError("no unlabelled images left to queue: another round took them")
            picked = pick(rows)
        number = store.create_round([int(candidates[i]) for i in picked], kind=kind,
                                    strategy=strategy,
                                    scores=[float(scores[i]) for i in picked] if store_scores else None,
                                    params=params, model_id=model_id)
    return picked, number
