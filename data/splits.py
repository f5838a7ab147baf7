"""Fixed train/val/test assignment.

The split of an image is a pure function of its group key (by default the content hash; for
video frames, the source block), so re-ingesting gives the same answer and near-duplicate frames
of one block never straddle train and test.
"""
from __future__ import annotations

import hashlib
from typing import Mapping


def assign_split(group_key: str, fractions: Mapping[str, float], seed: int = 0) -> str:
    """Map a group key to 'train', 'val' or 'test' with the given fractions."""
    total = sum(fractions.values())
    if total <= 0:
        raise ValueError("split fractions must add up to more than zero")
    digest = hashlib.sha256(f"{seed}:{group_key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    acc = 0.0
    for name in ("test", "val", "train"):
        acc += fractions.get(name, 0.0) / total
        if u < acc:
            return name
    return "train"
