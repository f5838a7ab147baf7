"""Training-recipe defaults that torch-free code (the Train page, the CLI's help) shows.

They live here, not only in :class:`models.train.TrainConfig`, because importing
``models.train`` loads torch, which the light pages must not (docs/ARCHITECTURE.md,
"Torch-free pages"). ``TrainConfig`` takes its defaults from this module: one source of truth.
"""
from __future__ import annotations

#: Train on random left-right mirrors and average both views at inference. Measured on the
#: real sets: docs/BENCHMARKS.md, "Mirror views".
MIRROR_VIEWS = False
