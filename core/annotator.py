"""The simulated annotator: labels images from the hidden ground truth.

Why: the active-learning loop, its benchmarks and the demo must run end to end without a human.
The simulator stands in for one: it answers only what the ground truth knows (a partial ground
truth gives a partial label), can be made to err at a given rate, and records its labels like
any other source (``simulated``, annotator ``simulator``) so provenance stays honest.
"""
from __future__ import annotations

import random
from typing import Iterable

from data.schema import LabelSchema
from data.store import ProjectStore

ANNOTATOR = "simulator"


def simulate_labels(store: ProjectStore, schema: LabelSchema, image_ids: Iterable[int], *,
                    error_rate: float = 0.0, seed: int = 0, round_id: int | None = None) -> int:
    """Label ``image_ids`` from ground truth; returns how many label versions were added.

    Each attribute is replaced, with probability ``error_rate``, by a uniformly chosen *other*
    class. The choice is a pure function of (seed, image id, attribute), so re-running the same
    request gives the same answers and, thanks to ``skip_if_same``, adds no new versions.
    Images without ground truth are skipped. ``round_id`` is the rounds table id (not number).
    """
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError("error_rate must be between 0 and 1")
    ids = [int(i) for i in image_ids]
    truth = store.ground_truth(ids)
    added = 0
    with store.transaction():
        for image_id in ids:
            values = truth.get(image_id)
            if not values:
                continue
            label: dict[str, str] = {}
            for attr in schema.attributes:
                value = values.get(attr)
                if value is None:
                    continue
                rng = random.Random(f"{seed}:{image_id}:{attr}")
                if error_rate > 0 and rng.random() < error_rate:
                    others = [c for c in schema.classes[attr] if c != value]
                    value = rng.choice(others)
                label[attr] = value
            if not label:
                continue
            version = store.add_label(image_id, label, source="simulated", annotator=ANNOTATOR,
                                      source_ref=f"error_rate={error_rate:g};seed={seed}",
                                      round_id=round_id)
            added += version is not None
    return added
