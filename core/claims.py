"""Claims: an image handed out from a round belongs to one annotator until its claim expires.

Why: with several annotators on one round, "the next unlabelled image" is the same image for
everyone. Serving an image claims it for whoever it is served to, so the next person gets the
next image; a claim expires (``claim_minutes``, default 30) so an image left open in a closed tab
goes back to the pool. Saving or skipping releases the claim at once.

A claim is per pass: pass 1 is the image's label, pass 2 its independent second label (see
core/double.py), so the second annotator of a double-labelled image never blocks the first.

Serving and claiming happen in one ``BEGIN IMMEDIATE`` transaction (``ProjectStore.transaction``):
SQLite lets one writer in at a time, so two processes (two app sessions, two machines on the same
workspace) cannot both see an image as free and both claim it.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Iterable

from core.access import Principal, audit, authorize
from core.double import ensure_double_items, second_label_candidates
from data.errors import UserError
from data.store import ProjectStore

DEFAULT_CLAIM_MINUTES = 30.0
META_CLAIM_MINUTES = "team.claim_minutes"
FIRST_PASS, SECOND_PASS = 1, 2


@dataclass(frozen=True)
class Claim:
    image_id: int
    pass_: int          # 1: the label; 2: the independent second label
    round_id: int
    annotator: str
    claimed_at: float
    expires_at: float


class ClaimedByOther(UserError):
    """The image is being labelled by someone else (their claim has not expired)."""


def claim_minutes(store: ProjectStore) -> float:
    """How long a served image stays reserved for its annotator."""
    try:
        return float(store.get_meta(META_CLAIM_MINUTES, str(DEFAULT_CLAIM_MINUTES)))  # type: ignore[arg-type]
    except ValueError:
        return DEFAULT_CLAIM_MINUTES


def set_claim_minutes(store: ProjectStore, minutes: float, *,
                      principal: Principal | None = None) -> float:
    who = authorize(store, principal, "configure_team")
    minutes = float(minutes)
    if not 1.0 <= minutes <= 24 * 60:
        raise UserError(f"a claim must last between 1 minute and 24 hours (got {minutes:g} min)")
    store.set_meta(META_CLAIM_MINUTES, repr(minutes))
    audit(store, who, "configure_team", {"claim_minutes": minutes})
    return minutes


def _claim(row) -> Claim:
    return Claim(int(row["image_id"]), int(row["pass"]), int(row["round_id"]), row["annotator"],
                 float(row["claimed_at"]), float(row["expires_at"]))


def _needed(store: ProjectStore, claim: Claim) -> bool:
    """Whether a held claim still waits for its annotator's label."""
    if claim.pass_ == FIRST_PASS:
        return store.conn.execute("SELECT 1 FROM labels WHERE image_id=? LIMIT 1",
                                  (claim.image_id,)).fetchone() is None
    return claim.image_id in set(second_label_candidates(store, claim.round_id, claim.annotator))


def _take(store: ProjectStore, image_id: int, pass_: int, round_id: int, annotator: str,
          now: float, ttl_s: float) -> Claim:
    store.conn.execute(
        "INSERT INTO claims(image_id, pass, round_id, annotator, claimed_at, expires_at) "
        "VALUES (?,?,?,?,?,?) ON CONFLICT(image_id, pass) DO UPDATE SET "
        "round_id=excluded.round_id, annotator=excluded.annotator, "
        "claimed_at=excluded.claimed_at, expires_at=excluded.expires_at",
        (image_id, pass_, round_id, annotator, now, now + ttl_s))
    return Claim(image_id, pass_, round_id, annotator, now, now + ttl_s)


def claim_next(store: ProjectStore, round_id: int, annotator: str, *,
               skip: Iterable[int] = (), now: float | None = None,
               ttl_s: float | None = None) -> Claim | None:
    """Serve ``annotator`` the next image of the round and claim it; None when nothing is left.

    In order: an image this annotator already holds (a reload gets the same image back, with a
    fresh expiry); else the highest-ranked image with no label that nobody else holds; else a
    double-labelled image waiting for a second label from someone other than its first annotator.
    ``skip``: images this annotator skipped in this session.
    """
    if not annotator:
        raise ValueError("claims need an annotator name")
    now = time.time() if now is None else now
    ttl_s = 60.0 * claim_minutes(store) if ttl_s is None else float(ttl_s)
    skipped = {int(i) for i in skip}
    with store.transaction():
        store.conn.execute("DELETE FROM claims WHERE expires_at <= ?", (now,))
        ensure_double_items(store, round_id)
        held = [_claim(r) for r in store.conn.execute(
            "SELECT * FROM claims WHERE annotator=? AND round_id=? ORDER BY claimed_at, pass",
            (annotator, round_id))]
        for claim in held:
            if claim.image_id in skipped:
                continue
            if _needed(store, claim):
                return _take(store, claim.image_id, claim.pass_, round_id, annotator, now, ttl_s)
            release(store, claim.image_id, annotator)  # labelled meanwhile (another tab)
        row = store.conn.execute(
            "SELECT i.image_id FROM round_items i WHERE i.round_id=? "
            " AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.image_id=i.image_id) "
            " AND NOT EXISTS (SELECT 1 FROM claims c WHERE c.image_id=i.image_id AND c.pass=1 "
            "  AND c.annotator != ?) "
            " AND i.image_id NOT IN (SELECT value FROM json_each(?)) "
            "ORDER BY i.rank LIMIT 1", (round_id, annotator, json.dumps(sorted(skipped)))).fetchone()
        if row is not None:
            return _take(store, int(row[0]), FIRST_PASS, round_id, annotator, now, ttl_s)
        taken = {int(r[0]) for r in store.conn.execute(
            "SELECT image_id FROM claims WHERE pass=2 AND annotator != ?", (annotator,))}
        for image_id in second_label_candidates(store, round_id, annotator):
            if image_id not in skipped and image_id not in taken:
                return _take(store, image_id, SECOND_PASS, round_id, annotator, now, ttl_s)
    return None


def holder(store: ProjectStore, image_id: int, pass_: int, *,
           now: float | None = None) -> str | None:
    """Who holds a live claim on (image, pass), if anyone."""
    now = time.time() if now is None else now
    row = store.conn.execute(
        "SELECT annotator FROM claims WHERE image_id=? AND pass=? AND expires_at > ?",
        (image_id, pass_, now)).fetchone()
    return None if row is None else str(row[0])


def check_free(store: ProjectStore, image_id: int, pass_: int, annotator: str, *,
               now: float | None = None) -> None:
    """Refuse a save on an image someone else holds (a stale page after an expired claim)."""
    other = holder(store, image_id, pass_, now=now)
    if other is not None and other != annotator:
        raise ClaimedByOther(f"this image is being labelled by {other} (your reservation "
                             "expired); skip to the next image")


def release(store: ProjectStore, image_id: int, annotator: str) -> None:
    """Give up ``annotator``'s claims on an image (after a save or a skip)."""
    store.conn.execute("DELETE FROM claims WHERE image_id=? AND annotator=?", (image_id, annotator))


def live_claims(store: ProjectStore, round_id: int | None = None, *,
                now: float | None = None) -> list[Claim]:
    """Claims that have not expired (of one round, or all)."""
    now = time.time() if now is None else now
    sql, args = "SELECT * FROM claims WHERE expires_at > ?", [now]
    if round_id is not None:
        sql += " AND round_id=?"
        args.append(round_id)
    return [_claim(r) for r in store.conn.execute(sql + " ORDER BY claimed_at", args)]
