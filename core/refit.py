"""The fast half of the two-speed loop: refit the heads on cached embeddings, re-rank the queue.

Full fine-tuning (the Retrain button) takes minutes; annotators save a label every few
seconds. So after every few saved labels (:data:`DEFAULT_EVERY`, or when a batch is finished)
a background job (kind ``refit``):

1. takes the pool's embeddings from the pretrained backbone (:func:`core.embeddings.pool_embeddings`,
   computed once and cached);
2. fits one linear head per attribute on the labelled **train-split** images only
   (:func:`models.heads.fit_heads`, missing attributes masked). Validation images are only
   used to report the heads' accuracy; val and test images (the queue's excluded splits) are
   never fitted, predicted or re-ranked;
3. predicts every unlabelled image outside those splits and saves the result the way pool
   scoring does (:class:`core.scoring.PoolScores` in ``<workspace>/refit/pool_scores.npz``),
   so ranking goes through the same acquisition functions as a model's scores
   (:func:`core.queue.rank_scores`);
4. re-ranks the unlabelled remainder of every open batch in place: the same images, in the
   order the round's own strategy gives on the fresh probabilities. Labelled images and val/test
   images keep their positions (those of the seed round must stay an unbiased random sample,
   so their order is never driven by a model).

What is not written: the per-image predictions/scores rows of the store. Those tables are keyed
by a trained model, and rewriting ~200k rows every ten labels would hold the database's write
lock while annotators save; the arrays file serves the queue and the Queue page instead.
The refit's record (when, on how many labels, which backbone) is the ``head_refit`` entry of the
store's meta table and each re-ranked round's ``record["reranked"]``.

Mirror views (``mirror=True``, the default): the heads are fitted on every labelled image and
its left-right mirror (orientation through the schema's flip map) and predict the mean of both
views (:mod:`models.heads`). It needs the pool's mirrored embeddings, computed once beside the
plain ones. Measured gain and cost: docs/BENCHMARKS.md, "Mirror views".

BALD needs MC-dropout samples, which a refitted linear head does not have: its scores carry no
BALD (``mc_passes=0``), and a round ranked by BALD is re-ranked by entropy with the same head
combination. Rounds chosen by typicality, ``auto`` or at random are re-ordered by ``entropy``.
The pool embeddings are kept once in the embeddings cache, not copied into the refit's file.
"""
from __future__ import annotations

import json
import time
from typing import Any, Mapping

import numpy as np

from core import acquisition as acq
from core.embeddings import PoolEmbeddings, pool_embeddings
from core.queue import EXCLUDED_SPLITS, rank_scores
from core.pool_scores import PoolScores
from core.refit_status import (BACKEND, DEFAULT_STRATEGY, HEAD_REFIT_ID, META_KEY,
                               RERANK_STRATEGIES, RefitRecord, complete_rounds, refit_dir)
from data.balance import mirror_maps
from data.errors import UserError
from data.progress import CancelFn, ProgressFn
from data.workspace import Workspace
from models.heads import DEFAULT_C, fit_heads



def _strategy_for(name: str | None, default: str) -> acq.Strategy:
    """The round's own strategy when it ranks by uncertainty, else ``default`` (see module doc)."""
    try:
        strat = acq.get_strategy(name) if name else None
    except ValueError:  # a selection strategy with no uncertainty measure (typicality, ...)
        strat = None
    if strat is None or strat.measure is None:
        return acq.get_strategy(default)
    if strat.measure == "bald":
        return acq.get_strategy("entropy-max" if strat.combine == "max" else "entropy")
    return strat


def _accuracy(probs: Mapping[str, np.ndarray], classes: Mapping[str, list[str]],
              labels: list[Mapping[str, str]]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score

    out = {}
    for attr, p in probs.items():
        rows = [i for i, lab in enumerate(labels) if lab.get(attr)]
        if rows:
            pred = [classes[attr][k] for k in p[rows].argmax(axis=1)]
            out[attr] = float(accuracy_score([labels[i][attr] for i in rows], pred))
    return out


def refit_and_rerank(ws: Workspace, *, embeddings: PoolEmbeddings | None = None,
                     backbone: str | None = None, class_weight: str | None = None,
                     C: float = DEFAULT_C, strategy: str = DEFAULT_STRATEGY,
                     rerank: bool = True, progress: ProgressFn | None = None,
                     should_cancel: CancelFn | None = None, mirror: bool = True,
                     mirrored: PoolEmbeddings | None = None) -> RefitRecord:
    """Refit the heads on the train split's labels and re-rank every open batch's remainder.

    ``embeddings`` may be given (tests, benchmarks); otherwise the cached pool embeddings of
    ``backbone`` are used (computed first when missing, the only slow step). With ``mirror``
    the mirrored views are used too: ``mirrored`` when given, else the cached mirrored
    embeddings of the same backbone (computed when missing) unless ``embeddings`` was given.
    """
    if strategy not in RERANK_STRATEGIES:
        raise UserError(f"a head refit ranks by {', '.join(RERANK_STRATEGIES)}; "
                        f"not {strategy!r}")
    t0 = time.perf_counter()
    created = time.time()
    schema = ws.schema
    with ws.store() as store:
        visited = store.current_labels(include_empty=True)
        split_of = {r.id: r.split for r in store.images()}
        pool_ids = store.unlabelled_ids(exclude_splits=EXCLUDED_SPLITS)
        open_rounds = [r for r in store.rounds()]
        items = {r["number"]: store.round_items(r["number"]) for r in open_rounds}
    complete = complete_rounds([(n, [it["image_id"] for it in its]) for n, its in items.items()], visited)
    t_read = time.perf_counter()
    given = embeddings is not None
    if embeddings is None:
        embeddings = pool_embeddings(ws, backbone, progress=progress)
    if mirror and mirrored is None and not given:
        if should_cancel is not None and should_cancel():
            raise UserError("head refit cancelled")
        mirrored = pool_embeddings(ws, embeddings.backbone, embeddings.image_size or None,
                                   progress=progress, mirrored=True)
    t_emb = time.perf_counter()
    if should_cancel is not None and should_cancel():
        raise UserError("head refit cancelled")
    row_of = {int(i): r for r, i in enumerate(embeddings.ids)}
    vectors = embeddings.vectors
    # the mirror view of row r of ``vectors`` is row r of ``flipped`` (None: no mirror views)
    flipped = _aligned_mirror(embeddings, mirrored) if mirror else None

    train_ids = [i for i, v in visited.items() if v and split_of.get(i) == "train" and i in row_of]
    if not train_ids:
        raise UserError("no labelled train-split images yet; label a few before refitting")
    reference = [row_of[i] for i, s in split_of.items() if s == "train" and i in row_of]
    classes = {a: list(schema.classes[a]) for a in schema.attributes}
    train_rows = [row_of[i] for i in train_ids]
    fit = fit_heads(vectors[train_rows], [visited[i] for i in train_ids],
                    classes, reference=vectors[reference], class_weight=class_weight, C=C,
                    mirrored=None if flipped is None else flipped[train_rows],
                    mirror_map=mirror_maps(schema))
    t_fit = time.perf_counter()

    def predict(rows: list[int] | np.ndarray) -> dict[str, np.ndarray]:
        return fit.predict_proba(vectors[rows], None if flipped is None else flipped[rows])

    pool_ids = [i for i in pool_ids if i in row_of]
    pool_rows = np.array([row_of[i] for i in pool_ids], dtype=np.int64)
    probs = predict(pool_rows)
    scores = PoolScores(HEAD_REFIT_ID, np.array(pool_ids, dtype=np.int64), probs,
                        np.zeros((len(pool_ids), 0), np.float32), {}, classes, BACKEND)
    val_ids = [i for i, v in visited.items() if v and split_of.get(i) == "val" and i in row_of]
    val_acc = _accuracy(predict([row_of[i] for i in val_ids]), classes,
                        [visited[i] for i in val_ids]) if val_ids else {}
    t_pred = time.perf_counter()

    record = RefitRecord(created_at=created, labelled=len(visited), n_train=fit.n_train(),
                         backbone=embeddings.backbone, origin=embeddings.origin.sentence(),
                         pool=len(pool_ids), complete=complete, val_accuracy=val_acc,
                         warnings=list(fit.warnings), mirror=flipped is not None)
    if rerank:
        index = {int(i): r for r, i in enumerate(scores.image_ids)}
        for rnd in open_rounds:
            ordered = _rerank_round(rnd, items[rnd["number"]], visited, split_of, index, scores,
                                    strategy)
            if ordered is None:
                continue
            order, strat = ordered
            with ws.store() as store:
                store.reorder_round(rnd["number"], order)
                store.update_round_record(rnd["number"], {"reranked": {
                    "at": created, "source": BACKEND, "strategy": strat,
                    "labels": record.train_labels, "items": len(order),
                    "mirror": record.mirror}})
            record.reranked[str(rnd["number"])] = len(order)
            record.strategies[str(rnd["number"])] = strat
    t_rank = time.perf_counter()

    scores.save_arrays(refit_dir(ws))
    record.timings = {"read_s": t_read - t0, "embeddings_s": t_emb - t_read, "fit_s": t_fit - t_emb,
                      "predict_s": t_pred - t_fit, "rerank_s": t_rank - t_pred,
                      "refit_to_rerank_s": t_rank - t_emb + t_read - t0, "save_s": time.perf_counter() - t_rank,
                      "total_s": time.perf_counter() - t0}
    with ws.store() as store:
        store.set_meta(META_KEY, json.dumps(record.to_dict()))
    return record


def _aligned_mirror(plain: PoolEmbeddings, mirrored: PoolEmbeddings | None) -> np.ndarray | None:
    """``mirrored``'s vectors in ``plain``'s row order, or None when they do not fit (another
    backbone or weights, or images missing): the refit then runs on plain views alone."""
    if mirrored is None or mirrored.backbone != plain.backbone \
            or mirrored.origin.kind != plain.origin.kind \
            or mirrored.vectors.shape[1:] != plain.vectors.shape[1:]:
        return None
    try:
        return mirrored.take(plain.ids)
    except KeyError:
        return None


def _rerank_round(rnd: Mapping[str, Any], items: list[dict[str, Any]], visited: Mapping[int, Any],
                  split_of: Mapping[int, str], index: Mapping[int, int], scores: PoolScores,
                  default: str) -> tuple[dict[int, tuple[int, float]], str] | None:
    """New (rank, score) for a round's pending non-test images, or None if it has none."""
    movable = [it for it in items if it["image_id"] not in visited
               and split_of.get(it["image_id"]) not in EXCLUDED_SPLITS
               and it["image_id"] in index]
    if len(movable) < 1:
        return None
    strat = _strategy_for(rnd.get("strategy"), default)
    weights = (rnd.get("params") or {}).get("weights") or None
    if weights and (set(weights) - set(scores.attributes)):
        weights = None
    sub = scores.subset([index[it["image_id"]] for it in movable])
    try:
        values = rank_scores(strat, sub, len(movable), weights=weights)
    except ValueError:  # weights that no longer fit (all zero, ...): rank with equal weights
        values = rank_scores(strat, sub, len(movable))
    slots = sorted(it["rank"] for it in movable)   # the positions these images held
    new_order = np.argsort(-values, kind="stable")
    order = {int(movable[k]["image_id"]): (int(slot), float(values[k]))
             for slot, k in zip(slots, new_order)}
    return order, strat.name
