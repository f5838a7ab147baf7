"""The ``auto`` strategy: typicality while the model is weak, then uncertainty with diversity.

Why: "Active Learning on a Budget" (Hacohen et al., ICML 2022) shows that the best strategy
flips with the budget. With few labels, uncertainty from a weak model is noise (an untrained
network scores every image 0.99+ in normalised entropy), and typical, covering examples teach
more (TypiClust). Once the model can rank, uncertainty wins, sampled stochastically (Kirsch et
al., TMLR 2023) and spread with a core-set that counts the labelled images (Sener & Savarese).

:func:`choose_auto` is a pure function of what the queue already knows, so the rule can be
tested and shown to the user as one sentence.
"""
from __future__ import annotations

from dataclasses import dataclass

AUTO_TYPICALITY_BELOW = 300
"""Below this many training labels ``auto`` uses typicality. Provisional: the lead sets it from
the few-labels benchmark (docs/BENCHMARKS.md)."""
AUTO_UNIFORM_ENTROPY = 0.95
"""Mean normalised entropy above which the model "cannot rank yet" (scores near uniform)."""
AUTO_TYPICALITY = "typiclust"
AUTO_UNCERTAINTY = "entropy"
AUTO_SAMPLING = "power"
AUTO_DIVERSITY = "kcenter"


@dataclass(frozen=True)
class AutoChoice:
    """What ``auto`` runs for this batch, and why in one sentence for the Queue page."""

    strategy: str
    sampling: str
    diversity: str | None
    reason: str


def choose_auto(n_labels: int, has_model: bool, mean_entropy: float | None = None, *,
                threshold: int | None = None, uniform: float | None = None) -> AutoChoice:
    """Typicality when there is no model, too few labels, or near-uniform scores; else entropy.

    ``mean_entropy`` is the candidates' mean normalised entropy (mean over heads); None when
    the pool was not scored (the label count already decided). ``threshold`` and ``uniform``
    default to :data:`AUTO_TYPICALITY_BELOW` and :data:`AUTO_UNIFORM_ENTROPY`.
    """
    threshold = AUTO_TYPICALITY_BELOW if threshold is None else int(threshold)
    uniform = AUTO_UNIFORM_ENTROPY if uniform is None else float(uniform)
    typical = AutoChoice(AUTO_TYPICALITY, "topk", None, "")
    if not has_model:
        return AutoChoice(**{**typical.__dict__, "reason": (
            f"typicality: no trained model yet, so the batch covers the pool's most typical "
            f"images ({n_labels} labels so far)")})
    if n_labels < threshold:
        return AutoChoice(**{**typical.__dict__, "reason": (
            f"typicality: only {n_labels} training labels (below {threshold}), too few for the "
            f"model's uncertainty to be trusted")})
    if mean_entropy is not None and mean_entropy > uniform:
        return AutoChoice(**{**typical.__dict__, "reason": (
            f"typicality: the model is too uncertain to rank (mean normalised entropy "
            f"{mean_entropy:.2f} > {uniform:.2f}) with {n_labels} labels")})
    ent = "" if mean_entropy is None else f", mean normalised entropy {mean_entropy:.2f}"
    return AutoChoice(AUTO_UNCERTAINTY, AUTO_SAMPLING, AUTO_DIVERSITY, (
        f"uncertainty: {n_labels} training labels and a model that can rank{ent}; entropy "
        f"with power sampling and a core-set that counts the labelled images"))
