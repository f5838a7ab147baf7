"""Round 0: a seeded random sample of unlabelled images."""
from __future__ import annotations

import random

from data.store import ProjectStore


class SamplingError(ValueError):
    pass


def sample_first_batch(store: ProjectStore, n: int = 1000, *, seed: int = 0) -> tuple[int, list[int]]:
    """Pick ``n`` unlabelled, not yet queued images at random and record them as a round.

    Once the project has an evaluation set (:mod:`data.evalset`), the test split is its
    reservoir and the sample comes from train and val only, so no label is spent on a test
    image that nothing would use. Without one (older projects), the sample spans all splits and
    its labelled test images are the held-out set. Returns (round number, ids).
    """
    if n <= 0:
        raise SamplingError("the batch size must be positive")
    with store.transaction():  # read candidates and record the round under one write lock
        skip = ("test",) if store.eval_set_ids() else ()
        candidates = store.unlabelled_ids(exclude_splits=skip, exclude_queued=True)
        if not candidates:
            raise SamplingError("no unlabelled images left to sample; ingest a pool first")
        rng = random.Random(seed)
        chosen = rng.sample(candidates, min(n, len(candidates)))
        number = store.create_round(chosen, kind="seed", strategy="random",
                                    params={"n": n, "seed": seed})
    return number, chosen
