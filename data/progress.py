"""The one progress/cancel callback signature every long task uses.

Ingestion, the demo pool, training, scoring, embedding, export, CVAT push/pull (cvat-sdk's
reporter is adapted in :mod:`cvat_bridge.progress`) and background jobs all take:

- ``progress: ProgressFn | None``, called as ``progress(Progress(...))``;
- ``should_cancel: CancelFn | None``, polled as ``should_cancel() -> bool`` where a task can stop.

Why one shape: a background job maps any task's progress onto its bar
(``core.jobs.JobContext.stage``), and the CLI draws a terminal bar from the same calls
(``core.cli_progress``). ``fraction`` is of the whole task; a task that counts things
(images decoded, images generated, bytes uploaded) also sets ``done``/``total`` for the current
stage, so a bar can say "600/600 images" instead of a percentage. ``details`` carries
task-specific figures (training's epoch, step and losses) for callers that chart them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class Progress:
    """How far a task is.

    ``fraction``: of the whole task, in [0, 1]. ``message``: the stage, short ("ingesting").
    ``done``/``total``: items of the current stage when the stage counts items (None otherwise).
    """

    fraction: float
    message: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
    done: int | None = None
    total: int | None = None

    @classmethod
    def counted(cls, done: int, total: int, message: str = "",
                details: Mapping[str, Any] | None = None) -> "Progress":
        """``done`` of ``total`` items (the fraction follows from them)."""
        frac = min(1.0, done / total) if total > 0 else 1.0
        return cls(frac, message, dict(details or {}), int(done), int(total))

    @property
    def text(self) -> str:
        """The message with the stage's count, for one-line displays ("ingesting 12/600")."""
        if self.total is None:
            return self.message
        count = f"{self.done}/{self.total}"
        return f"{self.message} {count}" if self.message else count


ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


def report(progress: ProgressFn | None, fraction: float, message: str = "") -> None:
    """Report a fixed point of a task (a no-op without a callback)."""
    if progress is not None:
        progress(Progress(fraction, message))


def scaled(progress: ProgressFn | None, lo: float, hi: float, label: str = "") -> ProgressFn | None:
    """A callback that maps a sub-task's [0, 1] onto [lo, hi] of ``progress`` (None stays None).

    The sub-task's ``done``/``total`` pass through unchanged: they count the stage, not the whole.
    """
    if progress is None:
        return None

    def forward(p: Progress) -> None:
        frac = lo + (hi - lo) * max(0.0, min(1.0, p.fraction))
        text = f"{label}: {p.message}" if label and p.message else (label or p.message)
        progress(Progress(frac, text, p.details, p.done, p.total))
    return forward
