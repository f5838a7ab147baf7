"""Agreement between two annotators on the double-labelled images (core/double.py).

Per attribute, for every annotator pair and for everyone together: percent agreement and Cohen's
kappa (``sklearn.metrics.cohen_kappa_score``), which discounts the agreement two people would
reach by chance given how often each uses each class. Per class (one class against the rest,
everyone together): *specific agreement* ``2·both / (first + second)``, the share of "it is this
class" answers the other annotator shared, and the one-vs-rest kappa.

An attribute one of the two marked unsure is left out of that attribute's figures (it is still a
disagreement for the review queue: core/review.py). Kappa is ``None`` where it is undefined (no
image yet, or both annotators gave one and the same class to every image).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from sklearn.metrics import cohen_kappa_score

from core.double import FIRST, REVIEW, SECOND
from data.schema import LabelSchema
from data.store import LabelVersion, ProjectStore


@dataclass(frozen=True)
class DoublePair:
    """One double-labelled image: the first label, the independent second one, any decision."""

    image_id: int
    round_id: int | None
    first: LabelVersion
    second: LabelVersion
    decision: LabelVersion | None  # a review decision made after both labels

    @property
    def annotators(self) -> tuple[str, str]:
        return (self.first.annotator or "?", self.second.annotator or "?")

    def disagreements(self, attributes: Sequence[str]) -> list[str]:
        """Attributes the two labels differ on (an unsure against a class counts)."""
        return [a for a in attributes if self.first.values.get(a) != self.second.values.get(a)]


@dataclass(frozen=True)
class AttributeAgreement:
    attribute: str
    annotators: tuple[str, str] | None  # None: every pair together
    n: int                              # images where both gave a class
    agreement: float | None             # share of those with the same class
    kappa: float | None


@dataclass(frozen=True)
class ClassAgreement:
    attribute: str
    value: str
    n: int                      # images where at least one of the two chose this class
    agreement: float | None     # specific agreement 2*both / (first + second)
    kappa: float | None         # this class against the rest


@dataclass(frozen=True)
class AgreementReport:
    images: int                 # double-labelled images with both labels
    disagreements: int          # of those, images whose two labels differ
    overall: list[AttributeAgreement]
    pairs: list[AttributeAgreement]
    classes: list[ClassAgreement]


def double_pairs(store: ProjectStore) -> list[DoublePair]:
    """Every image with an independent second label, with its first label and any decision."""
    ids = [int(r[0]) for r in store.conn.execute(
        "SELECT DISTINCT image_id FROM labels WHERE kind=? ORDER BY image_id", (SECOND,))]
    return [p for p in (double_pair(store, i) for i in ids) if p is not None]


def double_pair(store: ProjectStore, image_id: int) -> DoublePair | None:
    """The image's first label (its first annotator's latest), second label and decision."""
    history = store.label_history(image_id)
    firsts = [v for v in history if v.kind == FIRST and v.source == "builtin"]
    seconds = [v for v in history if v.kind == SECOND]
    if not firsts or not seconds:
        return None
    first = [v for v in firsts if v.annotator == firsts[0].annotator][-1]
    second = seconds[-1]
    decisions = [v for v in history if v.kind == REVIEW and v.id > max(first.id, second.id)]
    return DoublePair(image_id, first.round_id, first, second,
                      decisions[-1] if decisions else None)


def _kappa(a: list[str], b: list[str]) -> float | None:
    if len(set(a) | set(b)) < 2:  # no image, or one class throughout: chance agreement is 1
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an undefined kappa is reported as None, not warned
        value = float(cohen_kappa_score(a, b))
    return None if np.isnan(value) else value


def _attribute(attribute: str, who: tuple[str, str] | None,
               rows: list[tuple[str, str]]) -> AttributeAgreement:
    a = [x for x, _ in rows]
    b = [y for _, y in rows]
    agree = sum(x == y for x, y in rows) / len(rows) if rows else None
    return AttributeAgreement(attribute, who, len(rows), agree, _kappa(a, b))


def agreement(store: ProjectStore, schema: LabelSchema,
              pairs: list[DoublePair] | None = None) -> AgreementReport:
    """Agreement per attribute (overall and per annotator pair) and per class."""
    pairs = double_pairs(store) if pairs is None else pairs
    attributes = list(schema.attributes)
    overall, per_pair, classes = [], [], []
    for attr in attributes:
        rows_by_pair: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for p in pairs:
            x, y = p.first.values.get(attr), p.second.values.get(attr)
            if x is None or y is None:
                continue
            key = tuple(sorted(p.annotators))  # the pair, whoever labelled first
            rows_by_pair.setdefault(key, []).append((x, y))  # type: ignore[arg-type]
        everyone = [r for rows in rows_by_pair.values() for r in rows]
        overall.append(_attribute(attr, None, everyone))
        per_pair += [_attribute(attr, key, rows) for key, rows in sorted(rows_by_pair.items())]
        for value in schema.classes[attr]:
            first = [x == value for x, _ in everyone]
            second = [y == value for _, y in everyone]
            either = sum(f or s for f, s in zip(first, second))
            if not either:
                continue
            both = sum(f and s for f, s in zip(first, second))
            specific = 2 * both / (sum(first) + sum(second))
            classes.append(ClassAgreement(attr, value, either, specific,
                                          _kappa([str(f) for f in first], [str(s) for s in second])))
    disagreeing = sum(1 for p in pairs if p.disagreements(attributes))
    return AgreementReport(len(pairs), disagreeing, overall, per_pair, classes)
