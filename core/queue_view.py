"""The queue's read-only queries: candidates, covered images, label counts, stored batches and
why ``auto`` picks what it picks. Torch-free, so the Queue, Label and dashboard pages can import
them without loading the network code; ranking and recording a batch live in :mod:`core.queue`
(which re-exports these names).

Candidates are unlabelled images of the train split that no earlier round has queued: the
test split stays a fixed unbiased sample, the validation split is never pulled towards hard
examples (it decides early stopping, so it must look like the pool), and an image already
waiting in a batch is not offered twice.

Cost: everything a page calls on load (``training_label_count``, ``covered_ids``,
``label_counts``, ``auto_reason``, ``queue_items``) is an indexed store query whose cost follows
the labels, the queued images or the batch, never a scan of the pool's rows.
``candidate_ids`` reads every unlabelled image: it is the ranking job's input, not a page query.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from core import acquisition as acq
from core.pool_scores import pool_scores_for
from core.selection import choose_auto
from data.workspace import Workspace

EXCLUDED_SPLITS = ("val", "test")


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


def candidate_ids(ws: Workspace) -> list[int]:
    """Unlabelled, not yet queued images outside the validation and test splits and the
    evaluation set (reads every unlabelled image: the ranking job's input)."""
    with ws.store() as store:
        evaluation = set(store.eval_set_ids())   # test-split already; kept out explicitly too
        return [i for i in store.unlabelled_ids(exclude_splits=EXCLUDED_SPLITS, exclude_queued=True)
                if i not in evaluation]


def covered_ids(ws: Workspace) -> list[int]:
    """Images of the candidate splits already labelled or queued (the set a batch adds to)."""
    with ws.store() as store:
        return store.covered_ids(exclude_splits=EXCLUDED_SPLITS)


def training_label_count(ws: Workspace) -> int:
    """Labelled images outside the test split: what the model learns from."""
    with ws.store() as store:
        return store.labelled_count(exclude_splits=("test",))


def label_counts(ws: Workspace) -> dict[str, dict[str, int]]:
    """{attribute: {class: n}} over current labels outside the test split (what training sees)."""
    with ws.store() as store:
        return store.label_value_counts(exclude_splits=("test",))


def auto_reason(ws: Workspace) -> str:
    """What ``auto`` would pick now and why, without scoring (for the Queue page's controls).

    The mean entropy is taken over the saved pool scores' rows that are still candidates: not
    labelled or queued since, and not in the validation split (scoring leaves the test split,
    and so the evaluation set, out). An index-only read of the validation ids, no pool rows.
    """
    n = training_label_count(ws)
    with ws.store() as store:
        current = store.current_model()
    choice = choose_auto(n, current is not None)
    if choice.strategy != "typiclust" or current is None:
        pool = pool_scores_for(ws, int(current["id"])) if current is not None else None
        if pool is None:
            return ("decided when ranking: the current model's scores come first "
                    f"({n} training labels)")
        with ws.store() as store:
            gone = np.asarray(store.covered_ids() + store.split_ids("val"), dtype=np.int64)
        rows = np.flatnonzero(~np.isin(np.asarray(pool.image_ids, dtype=np.int64), gone))
        if rows.size == 0:
            return choice.reason
        mean_h = float(acq.combine_mean(pool.subset(rows.tolist()).per_head("entropy")).mean())
        choice = choose_auto(n, True, mean_h)
    return choice.reason


def round_reason(ws: Workspace, round_number: int) -> str:
    """The reason ``auto`` recorded for a round ('' for other strategies)."""
    with ws.store() as store:
        params = store.round(round_number).get("params") or {}
    return str((params.get("auto") or {}).get("reason", ""))


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
