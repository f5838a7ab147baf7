"""How big the evaluation set is, per head, and whether it is big enough to decide anything.

The CLI (``python -m core eval-set``), the Overview page and ``status`` show the same figures:
members labelled / total, per head the labelled members and their classes, and a warning where
the set is too small. "Too small" is measured, not guessed: the 95 % Wilson interval of a head's
accuracy on ``n`` images is wider than :data:`MAX_INTERVAL_WIDTH` (10 points), so two models
that differ by less than that cannot be told apart. The interval is taken at the current model's
accuracy on the set when there is one, else at 50 % (the widest case).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from scipy.stats import binomtest

from core.rounds import draw_eval_set, sample_first_batch
from data.evalset import DEFAULT_PER_CLASS, EvalSetDraw, eval_settings, fingerprint
from data.schema import LabelSchema
from data.store import ProjectStore

MAX_INTERVAL_WIDTH = 0.10   # a 95 % interval wider than 10 points decides nothing
CONFIDENCE = 0.95


def accuracy_interval(accuracy: float, n: int) -> tuple[float, float]:
    """95 % Wilson interval of an accuracy measured on ``n`` images (scipy's binomtest)."""
    if n < 1:
        return 0.0, 1.0
    k = int(round(min(max(accuracy, 0.0), 1.0) * n))
    ci = binomtest(k, n).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class HeadEvalSize:
    """One head's share of the evaluation set."""

    attribute: str
    labelled: int                      # members with a label for this attribute
    class_counts: dict[str, int]       # every class of the schema, zeros included
    accuracy: float | None             # the current model's accuracy on the set, if evaluated
    interval: tuple[float, float]      # 95 % interval at ``accuracy`` (or 50 %)
    warning: str | None = None

    @property
    def width(self) -> float:
        return self.interval[1] - self.interval[0]


@dataclass(frozen=True)
class EvalSetStatus:
    """The evaluation set as the user sees it."""

    members: int
    labelled: int                      # members with a label for at least one attribute
    per_class: int | None
    target: int | None
    test_images: int                   # test-split images in the pool (the set's reservoir)
    fingerprint: str | None            # of the labelled members: what evaluations are tied to
    heads: list[HeadEvalSize] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def exists(self) -> bool:
        return self.members > 0

    def lines(self) -> list[str]:
        """The terminal view (``python -m core eval-set``)."""
        if not self.exists:
            return ["evaluation set: none yet"] + [f"warning: {w}" for w in self.warnings]
        out = [f"evaluation set: {self.labelled} of {self.members} images labelled "
               f"(target {self.target}: {self.per_class} per class x the largest head; "
               f"test split {self.test_images} images)"]
        for h in self.heads:
            acc = "" if h.accuracy is None else f", model accuracy {h.accuracy:.1%}"
            seen = sum(1 for n in h.class_counts.values() if n)
            out.append(f"  {h.attribute:12s} {h.labelled:5d} labelled, {seen} of "
                       f"{len(h.class_counts)} classes seen{acc}, 95% interval "
                       f"{h.width * 100:.0f} points wide")
        out += [f"warning: {w}" for w in self.warnings]
        return out


def status_line(status: EvalSetStatus) -> str:
    """One line for ``status``: labelled / total and the per-head labelled counts."""
    heads = "  ".join(f"{h.attribute}={h.labelled}" for h in status.heads)
    flag = "  (too small: see `eval-set`)" if any(h.warning for h in status.heads) else ""
    return f"eval set: {status.labelled} of {status.members} labelled  {heads}{flag}"


def _model_accuracy(model: Mapping[str, Any] | None, fp: str | None) -> dict[str, float]:
    """The current model's per-head accuracy, if it was evaluated on exactly these images."""
    test = (model or {}).get("metrics", {}).get("test") or {}
    if not isinstance(test, Mapping) or (test.get("eval_set") or {}).get("fingerprint") != fp:
        return {}
    return {a: float(v) for a, v in (test.get("accuracy") or {}).items() if v is not None}


def eval_set_status(store: ProjectStore, schema: LabelSchema) -> EvalSetStatus:
    """Size, per-head labelled counts and warnings of the project's evaluation set."""
    members = store.eval_set_ids()
    test_images = len(store.images(split="test"))
    if not members:
        return EvalSetStatus(members=0, labelled=0, per_class=None, target=None,
                             test_images=test_images, fingerprint=None, warnings=[
                                 "no evaluation set yet, so accuracy is measured on whatever "
                                 "test images happen to be labelled; draw one with `python -m "
                                 f"core eval-set --per-class {DEFAULT_PER_CLASS}` (or on the "
                                 "Overview page)"])
    labels = store.current_labels()
    member_labels = {i: labels[i] for i in members if i in labels}
    fp = fingerprint(member_labels)
    settings = eval_settings(store) or {}
    accuracy = _model_accuracy(store.current_model(), fp)
    heads: list[HeadEvalSize] = []
    warnings: list[str] = []
    pending = len(members) - len(member_labels)
    if pending:
        warnings.append(f"{pending} of {len(members)} evaluation images still need a label; the "
                        "Label page serves them before any training batch")
    target = settings.get("target")
    if target and len(members) < target:
        warnings.append(f"the test split holds only {test_images} images, {target - len(members)} "
                        f"short of the target {target}; ingest more images to grow the set")
    for attr in schema.attributes:
        counts = {c: 0 for c in schema.classes[attr]}
        for values in member_labels.values():
            if values.get(attr) in counts:
                counts[values[attr]] += 1
        n = sum(counts.values())
        acc = accuracy.get(attr)
        interval = accuracy_interval(0.5 if acc is None else acc, n)
        width = interval[1] - interval[0]
        warning = None
        if width > MAX_INTERVAL_WIDTH:
            at = "at 50 %, the widest case" if acc is None else f"at the model's {acc:.0%}"
            warning = (f"{attr}: {n} labelled evaluation images are too few to decide anything: "
                       f"the 95 % interval of its accuracy is {width * 100:.0f} points wide ({at}), "
                       f"so models closer than that cannot be told apart; aim for an interval "
                       f"under {MAX_INTERVAL_WIDTH * 100:.0f} points")
            warnings.append(warning)
        heads.append(HeadEvalSize(attribute=attr, labelled=n, class_counts=counts, accuracy=acc,
                                  interval=interval, warning=warning))
    return EvalSetStatus(members=len(members), labelled=len(member_labels),
                         per_class=settings.get("per_class"), target=target,
                         test_images=test_images, fingerprint=fp, heads=heads, warnings=warnings)


@dataclass(frozen=True)
class FirstBatches:
    """What :func:`start_labelling` recorded: the evaluation round, then the seed round."""

    eval_draw: EvalSetDraw | None
    seed_round: int
    seed_ids: list[int]


def short_sample_text(asked: int, got: int) -> str:
    """What to say when the pool had fewer images to sample than asked for."""
    return (f"asked for {asked} images but only {got} unlabelled images were left to sample; "
            f"sampled all {got}")


def start_labelling(store: ProjectStore, schema: LabelSchema, n: int, *,
                    eval_per_class: int = DEFAULT_PER_CLASS, seed: int = 0) -> FirstBatches:
    """The evaluation set (when the project has none and ``eval_per_class`` > 0), then the random
    seed batch from train/val. The evaluation round is recorded first and the Label page serves
    it first, so it is labelled before any training batch. A pool with no test-split image gets
    no evaluation set (the status says so) rather than no seed batch.
    """
    draw = None
    if eval_per_class > 0 and not store.eval_set_ids() and store.images(split="test"):
        draw = draw_eval_set(store, schema, eval_per_class, seed=seed)
    number, ids = sample_first_batch(store, n, seed=seed)
    return FirstBatches(eval_draw=draw, seed_round=number, seed_ids=ids)
