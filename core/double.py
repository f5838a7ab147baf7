"""Double labelling: a share of each round is labelled independently by two annotators.

Why: the agreement of two people who did not see each other's answer is the honest measure of how
well the classes are defined, and the images they disagree on are exactly the ones worth a
reviewer's look (core/review.py). Agreement figures are in core/agreement.py.

Rules:
- Per round, ``ceil(share * size)`` of its images are chosen at random (seeded by the round), the
  first time the round is served to a named annotator. The choice is stored (``double_items``),
  so changing the share later applies to rounds (and images) not yet considered.
- The first label is an ordinary version: it becomes the current label at once, so training never
  waits for the second one. Only labels saved in the built-in annotator count as a first label.
- A *different* annotator is then served the image again (core/claims.py); their label is stored
  as kind ``'second'``: kept in the history, never the current label, so it does not overwrite
  the first. Each image gets one second label; after a review decision none is asked for.
- Editing one's own label (the Label page's Back) keeps its kind.
"""
from __future__ import annotations

import math
import random
from typing import Iterator

from core.access import Principal, audit, authorize
from data.errors import UserError
from data.store import ProjectStore

DEFAULT_SHARE = 0.10
META_SHARE = "team.double_share"

FIRST, SECOND, REVIEW = "label", "second", "review"


def double_share(store: ProjectStore) -> float:
    """The share of each round labelled twice (0: double labelling off)."""
    try:
        return float(store.get_meta(META_SHARE, str(DEFAULT_SHARE)))  # type: ignore[arg-type]
    except ValueError:
        return DEFAULT_SHARE


def set_double_share(store: ProjectStore, share: float, *,
                     principal: Principal | None = None) -> float:
    """Set the share (0-1) of each new round that two annotators label independently."""
    who = authorize(store, principal, "configure_team")
    share = float(share)
    if not 0.0 <= share <= 1.0 or math.isnan(share):
        raise UserError(f"the double-labelled share must be between 0 and 100 % (got {share:.0%})")
    store.set_meta(META_SHARE, repr(share))
    audit(store, who, "configure_team", {"double_share": share})
    return share


def ensure_double_items(store: ProjectStore, round_id: int) -> None:
    """Choose the round's double-labelled images, once (and top up if the round grew)."""
    with store.transaction():
        new = [int(r[0]) for r in store.conn.execute(
            "SELECT i.image_id FROM round_items i WHERE i.round_id=? AND NOT EXISTS ("
            " SELECT 1 FROM double_items d WHERE d.round_id=i.round_id AND d.image_id=i.image_id)"
            " ORDER BY i.rank", (round_id,))]
        if not new:
            return
        considered, chosen = store.conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(chosen), 0) FROM double_items WHERE round_id=?",
            (round_id,)).fetchone()
        target = math.ceil(double_share(store) * (int(considered) + len(new)) - 1e-9)
        want = max(0, min(len(new), target - int(chosen)))
        picked = set(random.Random(f"{round_id}:{considered}").sample(new, want))
        store.conn.executemany(
            "INSERT INTO double_items(round_id, image_id, chosen) VALUES (?,?,?)",
            [(round_id, i, int(i in picked)) for i in new])


def double_ids(store: ProjectStore, round_id: int | None = None) -> set[int]:
    """Images chosen for double labelling (in one round, or in any)."""
    sql, args = "SELECT image_id FROM double_items WHERE chosen=1", ()
    if round_id is not None:
        sql, args = sql + " AND round_id=?", (round_id,)
    return {int(r[0]) for r in store.conn.execute(sql, args)}


def is_double(store: ProjectStore, image_id: int) -> bool:
    return store.conn.execute("SELECT 1 FROM double_items WHERE image_id=? AND chosen=1",
                              (image_id,)).fetchone() is not None


def second_label_candidates(store: ProjectStore, round_id: int, annotator: str) -> Iterator[int]:
    """The round's double-labelled images that still wait for ``annotator``'s second label, in
    rank order: a first label by someone else exists, no second label or review decision does,
    and ``annotator`` has not labelled the image at all."""
    rows = store.conn.execute(
        "SELECT d.image_id FROM double_items d JOIN round_items i "
        " ON i.round_id=d.round_id AND i.image_id=d.image_id "
        "WHERE d.round_id=? AND d.chosen=1 "
        " AND EXISTS (SELECT 1 FROM labels l WHERE l.image_id=d.image_id AND l.kind='label' "
        "  AND l.source='builtin' AND l.annotator IS NOT NULL AND l.annotator != ?) "
        " AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.image_id=d.image_id "
        "  AND (l.kind IN ('second', 'review') OR l.annotator = ?)) "
        "ORDER BY i.rank", (round_id, annotator, annotator))
    for row in rows:
        yield int(row[0])


def label_kind(store: ProjectStore, image_id: int, annotator: str) -> str:
    """Whether ``annotator``'s save on this image is an ordinary label or the second label."""
    history = store.label_history(image_id)
    mine = [v for v in history if v.annotator == annotator and v.kind in (FIRST, SECOND)]
    if mine:
        return mine[-1].kind  # editing one's own label keeps its kind
    firsts = [v for v in history if v.kind == FIRST and v.source == "builtin"]
    if (firsts and firsts[0].annotator and firsts[0].annotator != annotator
            and not any(v.kind in (SECOND, REVIEW) for v in history)
            and is_double(store, image_id)):
        return SECOND
    return FIRST
