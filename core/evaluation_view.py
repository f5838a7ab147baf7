"""The Evaluate page's figures: the majority-class baseline beside each head's accuracy, and the
comparison of two models' reports in one unit (percent).

Why the training labels decide the baseline: "always answer the class most frequent in the
training labels" is the model a network with no useful features collapses to, and it is the
one a user could build without training. Its accuracy is measured on the same evaluated images
as the model (from the report's confusion matrix: rows are the true classes), so the two
numbers are directly comparable. (The report's own ``baseline`` takes the majority of the test
labels themselves, which a real guess cannot know.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from core.dashboard import class_counts
from data.schema import LabelSchema
from data.store import ProjectStore


@dataclass(frozen=True)
class HeadBaseline:
    """Always answering ``majority_class`` on the evaluated images of one head."""

    attribute: str
    majority_class: str | None   # None: this head has no training label
    train_share: float | None    # that class's share of the head's training labels
    accuracy: float | None       # on the evaluated images (None: no class or no image)
    n: int                       # evaluated images with a label for this head


def majority_baselines(train_counts: Mapping[str, Mapping[str, int]],
                       report: Mapping[str, Any]) -> dict[str, HeadBaseline]:
    """Per head: the majority class of ``train_counts[head]`` ({class: n}) and the accuracy it
    gets on the images ``report`` (an evaluation report dict) was measured on. Ties go to the
    class listed first (schema order), as ``argmax`` would."""
    out: dict[str, HeadBaseline] = {}
    for attr, head in report["heads"].items():
        counts = dict(train_counts.get(attr) or {})
        total = sum(counts.values())
        n = int(head.get("n") or 0)
        if total == 0:
            out[attr] = HeadBaseline(attr, None, None, None, n)
            continue
        majority = max(counts, key=lambda c: counts[c])  # first of the tied, in dict order
        accuracy = None
        classes, cm = head.get("classes") or [], head.get("confusion_matrix")
        if n and cm is not None:
            truth = dict(zip(classes, (sum(row) for row in cm)))
            accuracy = truth.get(majority, 0) / n
        out[attr] = HeadBaseline(attr, majority, counts[majority] / total, accuracy, n)
    return out


def report_baselines(store: ProjectStore, schema: LabelSchema,
                     report: Mapping[str, Any]) -> dict[str, HeadBaseline]:
    """:func:`majority_baselines` with the project's current training labels."""
    counts = class_counts(store, schema)
    return majority_baselines({a: counts[a]["train"] for a in schema.attributes}, report)


def percent(value: float | None) -> float | None:
    """A fraction as percent (None stays None): the one unit the Evaluate page shows."""
    return None if value is None else round(100.0 * float(value), 1)


def comparison_rows(a: Mapping[str, Any], b: Mapping[str, Any], la: str, lb: str,
                    baselines: Mapping[str, HeadBaseline] | None = None) -> list[dict[str, Any]]:
    """One row per head comparing reports ``a`` and ``b``: accuracy and macro F1 in percent,
    the change in percentage points, and the majority baseline (on ``b``'s images) in percent.
    A head one report lacks has None, not zero, so no change is invented."""
    rows = []
    for attr, ha in a["heads"].items():
        hb = b["heads"].get(attr, {})
        acc_a, acc_b = ha.get("accuracy"), hb.get("accuracy")
        base = (baselines or {}).get(attr)
        rows.append({
            "head": attr,
            f"accuracy {la} (%)": percent(acc_a),
            f"accuracy {lb} (%)": percent(acc_b),
            "Δ accuracy (points)": None if acc_a is None or acc_b is None
            else round(100.0 * (acc_b - acc_a), 1),
            f"macro F1 {la} (%)": percent(ha.get("macro_f1")),
            f"macro F1 {lb} (%)": percent(hb.get("macro_f1")),
            "majority baseline (%)": percent(base.accuracy) if base else None,
        })
    return rows


__all__ = ["HeadBaseline", "majority_baselines", "report_baselines", "percent", "comparison_rows"]
