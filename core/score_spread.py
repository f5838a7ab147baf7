"""Is the model that ranked a batch able to rank at all? A check on its stored scores.

A model that barely beats chance scores every image near the maximum entropy: ranking by
uncertainty then orders images by noise, and a batch picked that way teaches no more than a
random one. The check reads the per-head normalised entropies the ranking model stored
(``entropy:<head>`` = entropy / log K, so 1.0 is a uniform guess over K classes) and calls the
scores *near-uniform* when their mean over images and heads is above
:data:`core.selection.AUTO_UNIFORM_ENTROPY` (0.95): the same line the ``auto`` strategy uses to
switch to typicality, so the warning and the strategy agree. For scale: with 8 classes, 0.95
means a top class near 30 % with the rest spread evenly (chance is 12.5 %). The spread (10th to
90th percentile of the per-image mean) is reported too: a narrow spread near the top says the
scores barely tell images apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from core.acquisition import STRATEGIES, score_name
from core.selection import AUTO_TYPICALITY, AUTO_UNIFORM_ENTROPY
from data.workspace import Workspace


@dataclass(frozen=True)
class ScoreSpread:
    """Summary of one model's stored normalised entropies."""

    model_id: int | None
    images: int
    per_head: dict[str, float]   # mean normalised entropy per head
    mean: float                  # mean over heads of the per-head means
    spread: float                # p90 - p10 of the per-image mean over heads
    threshold: float = AUTO_UNIFORM_ENTROPY

    @property
    def near_uniform(self) -> bool:
        return self.mean > self.threshold

    def sentence(self) -> str:
        who = f"Model #{self.model_id}" if self.model_id is not None else "The model"
        heads = ", ".join(f"{a} {v:.2f}" for a, v in self.per_head.items())
        return (f"{who}'s scores are near-uniform: mean normalised entropy {self.mean:.2f} "
                f"(above {self.threshold:.2f}; 1.00 is a uniform guess) over {self.images} "
                f"images ({heads}), spread {self.spread:.2f} between the 10th and 90th "
                f"percentile. The model is too weak to rank, so this order is mostly noise. "
                f"Rank the next batch with the cold-start strategy instead: 'auto' (it picks "
                f"{AUTO_TYPICALITY} while the model cannot rank) or 'typiclust'/'probcover' "
                f"directly, which pick typical, covering images from the embeddings.")


def score_spread(per_head: Mapping[str, Mapping[int, float] | Sequence[float]], *,
                 model_id: int | None = None,
                 threshold: float = AUTO_UNIFORM_ENTROPY) -> ScoreSpread | None:
    """:class:`ScoreSpread` of per-head normalised entropies ({head: {image: value}} or
    {head: values}); None when nothing was scored. Images missing a head are averaged over
    the heads they have."""
    heads = {a: (dict(v) if isinstance(v, Mapping) else dict(enumerate(v)))
             for a, v in per_head.items() if len(v)}
    if not heads:
        return None
    ids = sorted(set().union(*heads.values()))
    table = np.full((len(ids), len(heads)), np.nan)
    index = {i: r for r, i in enumerate(ids)}
    for c, values in enumerate(heads.values()):
        for i, v in values.items():
            table[index[i], c] = v
    per_image = np.nanmean(table, axis=1)
    p10, p90 = np.percentile(per_image, [10, 90])
    means = {a: float(np.mean(list(v.values()))) for a, v in heads.items()}
    return ScoreSpread(model_id=model_id, images=len(ids), per_head=means,
                       mean=float(np.mean(list(means.values()))), spread=float(p90 - p10),
                       threshold=threshold)


def round_score_spread(ws: Workspace, round_number: int) -> ScoreSpread | None:
    """The check for the model that ranked round ``round_number`` by its scores (None: no model
    ranked it: a random, seed or typicality round, an ``auto`` round that chose typicality, or
    its scores were not stored)."""
    with ws.store() as store:
        rnd = store.round(round_number)
        model_id = (rnd or {}).get("model_id")
        if not model_id:
            return None
        ran = ((rnd.get("params") or {}).get("auto") or {}).get("chose") or rnd.get("strategy")
        if ran not in STRATEGIES or STRATEGIES[ran].kind != "uncertainty":
            return None
        per_head = {a: store.scores(int(model_id), score_name("entropy", a))
                    for a in ws.schema.attributes}
    return score_spread(per_head, model_id=int(model_id))


__all__ = ["ScoreSpread", "score_spread", "round_score_spread"]
