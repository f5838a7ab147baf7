"""Per-annotator progress and throughput, from the built-in annotator's label timestamps.

Throughput is images per hour of *labelling time*: the gaps between one person's consecutive saves
are summed, leaving out gaps longer than ``BREAK_S`` (a break, a meeting, the night), and the
number of saves after the first is divided by that time. So a day with a lunch break reads the
same as one without, and one save alone gives no rate yet.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from core.double import FIRST, REVIEW, SECOND
from data.store import ProjectStore

BREAK_S = 10 * 60.0


@dataclass(frozen=True)
class AnnotatorProgress:
    annotator: str
    images: int                 # distinct images labelled (first or second label)
    saves: int                  # label versions saved, edits included
    second_labels: int          # independent second labels among them
    reviews: int                # review decisions
    active_s: float             # labelling time (gaps up to BREAK_S between saves)
    first_at: float
    last_at: float
    last_hour: int              # saves in the hour before ``now``
    by_round: dict[int, int] = field(default_factory=dict)  # round number -> images labelled

    @property
    def images_per_hour(self) -> float | None:
        if self.active_s <= 0 or self.saves < 2:
            return None
        return (self.saves - 1) * 3600.0 / self.active_s


def annotator_progress(store: ProjectStore, *, now: float | None = None,
                       break_s: float = BREAK_S) -> list[AnnotatorProgress]:
    """One row per person who saved labels in the built-in annotator, most images first."""
    now = time.time() if now is None else now
    rows = store.conn.execute(
        "SELECT l.annotator, l.kind, l.image_id, l.created_at, r.number FROM labels l "
        "LEFT JOIN rounds r ON r.id=l.round_id "
        "WHERE l.source='builtin' AND l.annotator IS NOT NULL ORDER BY l.annotator, l.created_at")
    people: dict[str, list[tuple[str, int, float, int | None]]] = {}
    for who, kind, image_id, at, number in rows:
        people.setdefault(who, []).append((kind, int(image_id), float(at), number))
    out = []
    for who, saves in people.items():
        work = [s for s in saves if s[0] in (FIRST, SECOND)]
        times = [s[2] for s in work]
        active = sum(g for g in (b - a for a, b in zip(times, times[1:])) if g <= break_s)
        by_round: dict[int, set[int]] = {}
        for _kind, image_id, _at, number in work:
            if number is not None:
                by_round.setdefault(int(number), set()).add(image_id)
        all_times = [s[2] for s in saves]
        out.append(AnnotatorProgress(
            annotator=who, images=len({s[1] for s in work}), saves=len(work),
            second_labels=sum(1 for s in work if s[0] == SECOND),
            reviews=sum(1 for s in saves if s[0] == REVIEW), active_s=active,
            first_at=min(all_times), last_at=max(all_times),
            last_hour=sum(1 for t in times if now - t <= 3600.0),
            by_round={n: len(ids) for n, ids in sorted(by_round.items())}))
    return sorted(out, key=lambda p: (-p.images, p.annotator))
