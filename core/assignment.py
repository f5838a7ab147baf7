"""Rounds handed to named annotators: an annotator labels only in the rounds handed to them.

Rules (issue 14's role table):
- A maintainer hands a round to one or more accounts (``assign_round``); a new hand-out replaces
  the earlier one, and handing a round to nobody opens it again.
- A round handed to nobody is **open**: everyone who may label may label in it. That keeps the
  single-user workspace and a small team free of an assignment step; a team that wants to split
  the work hands each round out.
- Annotators and reviewers may label (and be served) images only of open rounds and of rounds
  handed to them. Maintainers may label in every round (they hand the rounds out).
- Enforced in the services (core.labeling's ``next_image_id`` and ``save_label`` call
  :func:`require_round` / :func:`require_image`); the Label page only lists the rounds
  :func:`visible_round_ids` allows, but a crafted request is refused all the same.
"""
from __future__ import annotations

import time
from typing import Iterable

from core.access import AccessDenied, Principal, audit, authorize
from data import accounts
from data.errors import UserError
from data.store import ProjectStore


def assign_round(store: ProjectStore, number: int, annotators: Iterable[str], *,
                 principal: Principal | None = None) -> list[str]:
    """Hand round ``number`` to these accounts (none: open to everyone); returns the names."""
    who = authorize(store, principal, "assign_rounds")
    round_id = int(store.round(number)["id"])
    names = sorted({str(n).strip() for n in annotators if str(n).strip()})
    known = {a.name: a for a in accounts.list_users(store)}
    for name in names:
        if name not in known:
            raise UserError(f"no account named {name!r}; add it with `python -m core users add`")
        if known[name].disabled:
            raise UserError(f"the account {name!r} is disabled")
    with store.transaction():
        store.conn.execute("DELETE FROM round_assignees WHERE round_id=?", (round_id,))
        store.conn.executemany(
            "INSERT INTO round_assignees(round_id, annotator, assigned_by, assigned_at) "
            "VALUES (?,?,?,?)", [(round_id, n, who.user, time.time()) for n in names])
    audit(store, who, "assign_rounds", {"round": number, "annotators": names})
    return names


def assignees(store: ProjectStore, round_id: int) -> list[str]:
    """The accounts a round is handed to (empty: open to everyone)."""
    return [r[0] for r in store.conn.execute(
        "SELECT annotator FROM round_assignees WHERE round_id=? ORDER BY annotator", (round_id,))]


def all_assignees(store: ProjectStore) -> dict[int, list[str]]:
    """{round_id: names} for every round handed out (open rounds are absent)."""
    out: dict[int, list[str]] = {}
    for round_id, name in store.conn.execute(
            "SELECT round_id, annotator FROM round_assignees ORDER BY round_id, annotator"):
        out.setdefault(int(round_id), []).append(name)
    return out


def unrestricted(who: Principal) -> bool:
    """Maintainers label in every round."""
    return who.role == "maintainer"


def may_label_round(store: ProjectStore, who: Principal, round_id: int) -> bool:
    if unrestricted(who):
        return True
    names = assignees(store, round_id)
    return not names or who.user in names


def visible_round_ids(store: ProjectStore, who: Principal | None) -> set[int] | None:
    """Rounds ``who`` may label in; None means every round."""
    if who is None or unrestricted(who):
        return None
    handed = all_assignees(store)
    rounds = {int(r[0]) for r in store.conn.execute("SELECT id FROM rounds")}
    return {r for r in rounds if r not in handed or who.user in handed[r]}


def require_round(store: ProjectStore, who: Principal, round_id: int) -> None:
    if not may_label_round(store, who, round_id):
        number = store.conn.execute("SELECT number FROM rounds WHERE id=?",
                                    (round_id,)).fetchone()
        raise AccessDenied(f"round {number[0] if number else round_id} is handed to "
                           f"{', '.join(assignees(store, round_id))}, not to {who.user}")


def require_image(store: ProjectStore, who: Principal, image_id: int) -> None:
    """Refuse a label on an image whose rounds are all handed to other people.

    An image in no round (labelled outside the queue) is open; an image in several rounds may be
    labelled where any of them is open to ``who``.
    """
    if unrestricted(who):
        return
    rounds = [int(r[0]) for r in store.conn.execute(
        "SELECT round_id FROM round_items WHERE image_id=?", (image_id,))]
    if rounds and not any(may_label_round(store, who, r) for r in rounds):
        require_round(store, who, rounds[0])
