"""Training-recipe defaults that torch-free code (the Train page, the CLI's help) shows.

They live here, not only in :class:`models.train.TrainConfig`, because importing
``models.train`` loads torch, which the light pages must not (docs/ARCHITECTURE.md,
"Torch-free pages"). ``TrainConfig`` takes its defaults from this module: one source of truth.
"""
from __future__ import annotations

#: Train on random left-right mirrors and average both views at inference. On by default since
#: it was measured on the real sets (Lite0, 500 random labels, fine-tuned, 3 seeds): orientation
#: 0.622 -> 0.672, type 0.693 -> 0.699, for about twice the inference time
#: (docs/BENCHMARKS.md, "Mirror views").
MIRROR_VIEWS = True
