"""The evaluation set: a fixed, user-sized, labelled-first sample of the test split.

Why an explicit set: the held-out images used to be "whatever part of round 0 fell in the test
split", about 20 images on the app's default demo, so the learning curve was noise. Here the user
picks a size per class; the set is drawn once (seeded), recorded (by ``core.rounds.draw_eval_set``; this module only plans the draw) as a labelling
round of kind ``eval`` that the Label page serves before any training batch, and its membership is stored in
the ``eval_set`` table. Members stay members, so every point of the learning curve is measured on
the same images.

Sizing without labels: classes are unknown before labelling, so the target is
``per_class x the largest number of classes of any head`` (30 x 10 colours = 300 on the default
schema). A random draw then holds about ``per_class`` images per class where classes are
balanced; rarer classes get fewer, which :mod:`core.evalset` reports after labelling.

Where members come from: the test split only. Splits are assigned per group (content hash or
video block), so an evaluation image never shares a block with a training image, and training,
pool scoring and the queue already exclude the test split. When the test split is smaller than
the target, the whole test split is the set and the shortfall is reported.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any, Sequence

from data.schema import LabelSchema
from data.store import ProjectStore

DEFAULT_PER_CLASS = 30
EVAL_ROUND_KIND = "eval"
META_KEY = "eval_set"


class EvalSetError(ValueError):
    """The evaluation set cannot be drawn as asked (bad size, no test images)."""


@dataclass(frozen=True)
class EvalSetDraw:
    """What one call to ``core.rounds.draw_eval_set`` did."""

    per_class: int
    target: int                 # per_class x max classes of any head
    size: int                   # members after the draw
    added: list[int]            # members added by this call (draw order)
    queued: list[int]           # of those, the ones recorded in the new eval round
    round_number: int | None    # the eval round made for them (None: nothing to label)
    available: int              # test-split images in the pool

    @property
    def short_by(self) -> int:
        """How many members the test split could not supply."""
        return max(0, self.target - self.size)


def fingerprint(image_ids: Sequence[int]) -> str:
    """A short id of a set of images: two evaluations with the same one saw the same images."""
    text = ",".join(str(i) for i in sorted(int(i) for i in image_ids))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def eval_target(schema: LabelSchema, per_class: int) -> int:
    """Members wanted: ``per_class`` times the largest class count of any head."""
    return int(per_class) * max(len(c) for c in schema.classes.values())


def eval_settings(store: ProjectStore) -> dict[str, Any] | None:
    """The size settings of the last draw ({per_class, seed, target}), or None."""
    raw = store.get_meta(META_KEY)
    return json.loads(raw) if raw else None


@dataclass(frozen=True)
class EvalSetPlan:
    """What a draw would do (read only; ``core.rounds.draw_eval_set`` records it)."""

    per_class: int
    target: int
    members: list[int]          # current members, draw order
    chosen: list[int]           # test images to add, in labelling order
    to_queue: list[int]         # of those, the ones that need a label and wait in no round
    available: int              # test-split images in the pool


def plan_eval_set(store: ProjectStore, schema: LabelSchema, per_class: int = DEFAULT_PER_CLASS,
                  *, seed: int = 0) -> EvalSetPlan:
    """Which test images grow the evaluation set to ``per_class x max classes`` (never shrink).

    Draw order, which is also the labelling order: test images that already carry a label
    (an older project's test set, imported labels) first, by id; then test images already
    waiting in a round; then a seeded random sample of the rest. The chosen images that still
    need a label and are not waiting in a round yet are the ones to queue. Reads only: the
    caller holds the write transaction that records the plan.
    """
    if per_class < 1:
        raise EvalSetError("the evaluation set needs at least 1 image per class")
    target = eval_target(schema, per_class)
    members = store.eval_set_ids()
    test_ids = [r.id for r in store.images(split="test")]
    if not test_ids:
        raise EvalSetError("the pool has no test-split images to evaluate on; ingest more "
                           "images or raise the test fraction before ingesting")
    member_set = set(members)
    labelled = store.labelled_ids()
    queued = store.queued_ids()
    free = [i for i in test_ids if i not in member_set]
    first = [i for i in free if i in labelled]
    waiting = [i for i in free if i not in labelled and i in queued]
    rest = [i for i in free if i not in labelled and i not in queued]
    random.Random(seed).shuffle(rest)
    chosen = (first + waiting + rest)[:max(0, target - len(members))]
    return EvalSetPlan(per_class=per_class, target=target, members=members, chosen=chosen,
                       to_queue=[i for i in chosen if i not in labelled and i not in queued],
                       available=len(test_ids))


def settings_after(store: ProjectStore, plan: EvalSetPlan, seed: int) -> str:
    """The ``eval_set`` meta value after recording ``plan`` (sizes only grow)."""
    previous = eval_settings(store) or {}
    return json.dumps({"per_class": max(plan.per_class, previous.get("per_class", 0)),
                       "seed": seed, "target": max(plan.target, previous.get("target", 0))})
