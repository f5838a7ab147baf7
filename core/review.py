"""The review queue: double-labelled images whose two labels disagree, and the reviewer's decision.

Why a decision and not a vote: with two annotators there is no majority, and the disagreements
are where the class definitions are unclear, so someone who owns the definitions (role reviewer or
maintainer; access action ``review``) settles each one. The decision is stored as a new label
version of kind ``'review'`` by the reviewer: it becomes the current label (training uses it), and
the first and second labels stay in the history. Every decision goes to the audit trail with both
labels it settled.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from core.access import Principal, audit, authorize
from core.agreement import DoublePair, double_pair, double_pairs
from core.double import REVIEW
from data.errors import UserError
from data.schema import LabelSchema
from data.store import ProjectStore


@dataclass(frozen=True)
class ReviewItem:
    """One open disagreement."""

    pair: DoublePair
    attributes: list[str]  # the attributes the two labels differ on

    @property
    def image_id(self) -> int:
        return self.pair.image_id


def _open(pair: DoublePair | None, schema: LabelSchema) -> ReviewItem | None:
    if pair is None or pair.decision is not None:
        return None
    differ = pair.disagreements(list(schema.attributes))
    return ReviewItem(pair, differ) if differ else None


def review_queue(store: ProjectStore, schema: LabelSchema,
                 pairs: list[DoublePair] | None = None) -> list[ReviewItem]:
    """Open disagreements, oldest second label first."""
    items = [i for i in (_open(p, schema) for p in (double_pairs(store) if pairs is None
                                                    else pairs)) if i is not None]
    return sorted(items, key=lambda i: (i.pair.second.created_at, i.image_id))


def decide(store: ProjectStore, schema: LabelSchema, image_id: int,
           choices: Mapping[str, str | None], *, principal: Principal | None = None) -> int:
    """Settle a disagreement: ``choices`` (``None``: unsure) become the image's current label.

    Returns the new version. Refused for an image with no open disagreement (already decided, or
    the two labels agree), so two reviewers cannot decide the same image twice by accident.
    """
    who = authorize(store, principal, "review")
    values = schema.normalise_label({a: v for a, v in choices.items() if v},
                                    item=store.image(image_id).name)
    with store.transaction():
        item = _open(double_pair(store, image_id), schema)
        if item is None:
            raise UserError(f"image {store.image(image_id).name} has no open disagreement to "
                            "review (decided already, or the two labels agree)")
        pair = item.pair
        version = store.add_label(image_id, values, source="builtin", annotator=who.user,
                                  round_id=pair.round_id, skip_if_same=False, kind=REVIEW)
        assert version is not None
        audit(store, who, "review", {
            "image_id": image_id, "version": version, "values": values,
            "attributes": item.attributes,
            "first": {"annotator": pair.first.annotator, "version": pair.first.version,
                      "values": pair.first.values},
            "second": {"annotator": pair.second.annotator, "version": pair.second.version,
                       "values": pair.second.values}})
    return version
