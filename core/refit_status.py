"""The head refit's state, cheap to read: its record, when the next one is due, what ranked a batch.

The pages (Label, Queue) import this module on every run, so it holds only what reads the store
and the saved refit scores, never the fitting code (scikit-learn, torch): the service that
refits is :mod:`core.refit` and runs in a background job.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from core import acquisition as acq
from core.access import Principal
from core.jobs import JobConflict, active_jobs, start_job
from core.pool_scores import PoolScores, load_pool_scores
from data.workspace import Workspace

ENV_AUTO_REFIT = "CARGROUP_AUTO_REFIT"
META_KEY = "head_refit"
REFIT_DIR = "refit"
HEAD_REFIT_ID = 0            # PoolScores.model_id of a head refit (store model ids start at 1)
BACKEND = "head-refit"
DEFAULT_EVERY = 10           # refit after this many newly labelled images
DEFAULT_STRATEGY = "entropy"  # for rounds whose own strategy has no uncertainty measure
RERANK_STRATEGIES = tuple(n for n, s in acq.STRATEGIES.items()
                          if s.kind == "uncertainty" and s.measure != "bald")
"""What a head refit can rank by: uncertainty from probabilities (no MC-dropout, so no BALD)."""


@dataclass
class RefitRecord:
    """One head refit: what it learnt from, what it re-ranked, how long each step took."""

    created_at: float
    labelled: int                        # images with any saved label (incl. all-unsure) at start
    n_train: dict[str, int]              # train-split labels per head
    backbone: str
    origin: str
    pool: int                            # unlabelled non-test images predicted
    complete: list[int] = field(default_factory=list)        # rounds fully labelled at start
    reranked: dict[str, int] = field(default_factory=dict)   # round number -> items re-ordered
    strategies: dict[str, str] = field(default_factory=dict)  # round number -> strategy used
    val_accuracy: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    mirror: bool = False                 # fitted and predicted on mirror views too

    @property
    def train_labels(self) -> int:
        """Train images that taught at least one head (the M of "head refit on M labels")."""
        return max(self.n_train.values(), default=0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RefitRecord":
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


def refit_dir(ws: Workspace) -> Path:
    return ws.root / REFIT_DIR


def last_refit(ws: Workspace) -> RefitRecord | None:
    """The latest refit's record, or None before the first one."""
    with ws.store() as store:
        raw = store.get_meta(META_KEY)
    return RefitRecord.from_dict(json.loads(raw)) if raw else None


def refit_scores(ws: Workspace) -> PoolScores | None:
    """The latest refit's pool scores (probabilities per head), or None."""
    return load_pool_scores(refit_dir(ws))


def due(ws: Workspace, every: int = DEFAULT_EVERY) -> bool:
    """True when ``every`` images were labelled since the last refit, or a batch was finished.

    The debounce: refitting after each single label would keep a core busy for little change.
    """
    with ws.store() as store:
        visited = set(store.current_labels(include_empty=True))
        raw = store.get_meta(META_KEY)
        rounds = [(r["number"], [it["image_id"] for it in store.round_items(r["number"])])
                  for r in store.rounds()]
    last = RefitRecord.from_dict(json.loads(raw)) if raw else None
    before = last.labelled if last else 0
    new = len(visited) - before
    if new <= 0:
        return False
    if new >= max(1, int(every)):
        return True
    # batch end: a round finished since the last refit
    return bool(set(complete_rounds(rounds, visited)) - set(last.complete if last else ()))


def complete_rounds(rounds: list[tuple[int, list[int]]], visited: Mapping[int, Any] | set[int]) -> list[int]:
    return [number for number, ids in rounds if ids and all(i in visited for i in ids)]


def ranking_source(ws: Workspace, round_number: int, *, now: float | None = None) -> str:
    """One line for the Queue and Label pages: where the batch's current order comes from.

    "ranked 12 s ago from head refit on 40 labels" after a refit re-ranked it, else
    "ranked 3 min ago from model #2", or "random order (seed batch)".
    """
    now = time.time() if now is None else now
    with ws.store() as store:
        rnd = store.round(round_number)
    rer = rnd["record"].get("reranked")
    if rer:
        views = " and their mirror views" if rer.get("mirror") else ""
        return (f"ranked {_age(now - float(rer['at']))} ago from head refit on "
                f"{int(rer['labels'])} labels{views} ({rer['strategy']})")
    if rnd.get("model_id"):
        return f"ranked {_age(now - float(rnd['created_at']))} ago from model #{rnd['model_id']}"
    return f"{rnd['strategy'] or rnd['kind']} order, made {_age(now - float(rnd['created_at']))} ago"


def _age(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    if s < 90:
        return f"{s} s"
    if s < 90 * 60:
        return f"{s // 60} min"
    return f"{s // 3600} h"


def auto_refit_enabled() -> bool:
    """False when ``$CARGROUP_AUTO_REFIT`` is ``0``/``off``/``false`` (the test suite sets it so
    page tests that save labels do not start background workers; ``refit`` and the Queue page's
    button still work)."""
    return os.environ.get(ENV_AUTO_REFIT, "1").strip().lower() not in ("0", "off", "false", "no")


def request_refit(ws: Workspace, *, every: int = DEFAULT_EVERY, spawn: bool = True,
                  principal: Principal | None = None) -> int | None:
    """Start a background refit when one is :func:`due` and none is running; returns its job id.

    Called by the Label page after every save, so it must never block or raise on a busy job.
    """
    if not auto_refit_enabled():
        return None
    if not due(ws, every):
        return None
    with ws.store() as store:
        if active_jobs(store, kind="refit"):
            return None
    try:
        return start_job(ws, "refit", {"every": int(every)}, spawn=spawn,
                         **({"principal": principal} if principal is not None else {}))
    except JobConflict:
        return None


def overlay_predictions(ws: Workspace, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Queue-view rows with the latest refit's predictions and per-head scores where it has them.

    Used for batches a refit re-ranked, so each thumbnail shows the probabilities its current
    rank came from (a labelled image keeps what the model said before).
    """
    pool = refit_scores(ws)
    if pool is None:
        return items
    index = {int(i): r for r, i in enumerate(pool.image_ids)}
    per_head = {m: pool.per_head(m) for m in ("entropy", "margin", "least_confidence")}
    out = []
    for it in items:
        row = index.get(int(it["image_id"]))
        if row is None:
            out.append(it)
            continue
        preds = {}
        for a, p in pool.probs.items():
            k = int(np.argmax(p[row]))
            preds[a] = (pool.class_names[a][k], float(p[row, k]))
        scores = {acq.score_name(m, a): float(v[row]) for m, per in per_head.items()
                  for a, v in per.items()}
        out.append({**it, "predictions": preds, "scores": scores, "source": BACKEND})
    return out
