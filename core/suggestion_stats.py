"""How annotators treat the model's suggestions: acceptance and override rates (automation bias).

Every label saved on the Label page records, per attribute, what the model suggested, whether it
was pre-selected (at or above the pre-fill threshold) or only a hint, and whether the annotator
kept it, chose another class or chose unsure (``label_suggestions``, see core.labeling).

Why show it: an annotator who accepts 100 % of pre-selected answers while the model is right on
70 % is confirming, not labelling. Rates per annotator reveal that; rates per suggested class show
which classes the model pushes wrongly; pre-selected vs hint compares the two displays.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

from data.store import ProjectStore

MODES = {1: "pre-selected", 0: "hint"}


@dataclass
class SuggestionRate:
    """Outcome counts for one group of suggestions, with acceptance and override rates."""

    group: dict[str, str]
    shown: int = 0
    accepted: int = 0
    changed: int = 0
    unsure: int = 0

    @property
    def acceptance(self) -> float:
        """Share of suggestions the annotator kept (for a hint: picked that class)."""
        return self.accepted / self.shown if self.shown else 0.0

    @property
    def override(self) -> float:
        """Share the annotator did not keep: another class or unsure."""
        return (self.changed + self.unsure) / self.shown if self.shown else 0.0

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        return {**d.pop("group"), **d, "acceptance": self.acceptance, "override": self.override}


def _grouped(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], dict[str, str]]
             ) -> list[SuggestionRate]:
    groups: dict[tuple[str, ...], SuggestionRate] = {}
    for r in rows:
        g = key(r)
        rate = groups.setdefault(tuple(g.values()), SuggestionRate(g))
        n = int(r["n"])
        rate.shown += n
        setattr(rate, r["outcome"], getattr(rate, r["outcome"]) + n)
    return [groups[k] for k in sorted(groups)]


def by_annotator(store: ProjectStore) -> list[SuggestionRate]:
    """Per annotator and display mode (pre-selected / hint), over every head."""
    return _grouped(store.suggestion_outcomes(),
                    lambda r: {"annotator": r["annotator"] or "", "mode": MODES[int(r["preselected"])]})


def by_class(store: ProjectStore) -> list[SuggestionRate]:
    """Per head, suggested class and display mode, over every annotator."""
    return _grouped(store.suggestion_outcomes(),
                    lambda r: {"head": r["attribute"], "suggested": r["suggested"],
                               "mode": MODES[int(r["preselected"])]})
