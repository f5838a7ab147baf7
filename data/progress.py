"""The one progress/cancel callback signature every long task uses (training, scoring, export, jobs).

Why one shape: a background job maps any task's progress onto its bar, and the CLI draws a tqdm
bar from the same calls. A task calls ``progress(Progress(fraction, message, details))`` and polls
``should_cancel()``; ``details`` carries task-specific figures (training's epoch, step and
losses) for callers that chart them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class Progress:
    """How far a task is: ``fraction`` of the whole in [0, 1], a short message, extra figures."""

    fraction: float
    message: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


def scaled(progress: ProgressFn | None, lo: float, hi: float, label: str = "") -> ProgressFn | None:
    """A callback that maps a sub-task's [0, 1] onto [lo, hi] of ``progress`` (None stays None)."""
    if progress is None:
        return None

    def report(p: Progress) -> None:
        frac = lo + (hi - lo) * max(0.0, min(1.0, p.fraction))
        text = f"{label}: {p.message}" if label and p.message else (label or p.message)
        progress(Progress(frac, text, p.details))
    return report
