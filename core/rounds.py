"""Recording the first rounds: the evaluation set's round and the random seed batch (round 0).

Why here: ``core`` is the one writer of rounds. ``data.sampling`` and ``data.evalset`` decide
which images (reads only); these functions take the write lock, ask them, and record the
result in the same IMMEDIATE transaction, so two processes never queue the same image. The
queue's later rounds are recorded by ``core.queue`` the same way.
"""
from __future__ import annotations

from data.evalset import (DEFAULT_PER_CLASS, EVAL_ROUND_KIND, META_KEY, EvalSetDraw,
                          plan_eval_set, settings_after)
from data.sampling import pick_first_batch
from data.schema import LabelSchema
from data.store import ProjectStore


def sample_first_batch(store: ProjectStore, n: int = 1000, *, seed: int = 0) -> tuple[int, list[int]]:
    """Pick ``n`` images at random (:func:`data.sampling.pick_first_batch`) and record them as
    a ``seed`` round. Returns (round number, ids)."""
    with store.transaction():  # read candidates and record the round under one write lock
        chosen = pick_first_batch(store, n, seed=seed)
        number = store.create_round(chosen, kind="seed", strategy="random",
                                    params={"n": n, "seed": seed})
    return number, chosen


def draw_eval_set(store: ProjectStore, schema: LabelSchema, per_class: int = DEFAULT_PER_CLASS,
                  *, seed: int = 0) -> EvalSetDraw:
    """Grow the evaluation set (:func:`data.evalset.plan_eval_set`) and record the members that
    need a label as a new round of kind ``eval``. Calling again with the same or a smaller size
    adds nothing."""
    with store.transaction():
        plan = plan_eval_set(store, schema, per_class, seed=seed)
        added = store.add_to_eval_set(plan.chosen)
        fresh = set(added)
        to_queue = [i for i in plan.to_queue if i in fresh]
        number = None
        if to_queue:
            number = store.create_round(to_queue, kind=EVAL_ROUND_KIND, strategy="random",
                                        params={"per_class": per_class, "seed": seed,
                                                "target": plan.target})
        store.set_meta(META_KEY, settings_after(store, plan, seed))
    return EvalSetDraw(per_class=per_class, target=plan.target,
                       size=len(plan.members) + len(added), added=added, queued=to_queue,
                       round_number=number, available=plan.available)
