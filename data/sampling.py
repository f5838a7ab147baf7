"""Round 0's picks: a seeded random sample of unlabelled, not yet queued images.

This module only reads the store and returns the picks; recording them as a round is
``core.rounds.sample_first_batch``'s job (``core`` is the one writer of rounds). The caller holds
the write transaction across the read and the record, so two processes cannot pick the same
images.
"""
from __future__ import annotations

import random

from data.store import ProjectStore


class SamplingError(ValueError):
    pass


def pick_first_batch(store: ProjectStore, n: int = 1000, *, seed: int = 0) -> list[int]:
    """``n`` unlabelled, not yet queued images drawn at random (seeded), in draw order.

    Once the project has an evaluation set (:mod:`data.evalset`), the test split is its
    reservoir and the sample comes from train and val only, so no label is spent on a test
    image that nothing would use. Without one (older projects), the sample spans all splits and
    its labelled test images are the held-out set.
    """
    if n <= 0:
        raise SamplingError("the batch size must be positive")
    skip = ("test",) if store.eval_set_ids() else ()
    candidates = store.unlabelled_ids(exclude_splits=skip, exclude_queued=True)
    if not candidates:
        raise SamplingError("no unlabelled images left to sample; ingest a pool first")
    return random.Random(seed).sample(candidates, min(n, len(candidates)))
