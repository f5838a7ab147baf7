"""Round 0: a seeded random sample of unlabelled images."""
from __future__ import annotations

import random

from data.store import ProjectStore


class SamplingError(ValueError):
    pass


def sample_first_batch(store: ProjectStore, n: int = 1000, *, seed: int = 0) -> tuple[int, list[int]]:
    """Pick ``n`` unlabelled, not yet queued images at random and record them as a round.

    The sample spans all splits on purpose: the labelled test images it yields are the fixed,
    unbiased held-out set that every later round is evaluated on. Returns (round number, ids).
    """
    if n <= 0:
        raise SamplingError("the batch size must be positive")
    with store.transaction():  # read candidates and record the round under one write lock
        candidates = store.unlabelled_ids(exclude_queued=True)
        if not candidates:
            raise SamplingError("no unlabelled images left to sample; ingest a pool first")
        rng = random.Random(seed)
        chosen = rng.sample(candidates, min(n, len(candidates)))
        number = store.create_round(chosen, kind="seed", strategy="random",
                                    params={"n": n, "seed": seed})
    return number, chosen
