"""Real progress for push/pull jobs through cvat-sdk's own progress hooks.

cvat-sdk reports uploads (``Task.upload_data(pbar=...)``), downloads (``export_dataset(pbar=...)``)
and auto-annotation (``annotate_task(pbar=...)``) to a :class:`cvat_sdk.core.progress.ProgressReporter`.
:class:`StageProgress` is one such reporter that maps the SDK's "n of total" onto a slice
``[lo, hi]`` of the whole job and calls the project's one progress callback
(:mod:`data.progress`) with ``Progress(fraction, message, done=n, total=of)``, so the app's job
panel moves with the bytes actually sent instead of sitting at a fixed 5 %.
"""
from __future__ import annotations

from cvat_sdk.core.progress import BaseProgressReporter

from data.progress import Progress, ProgressFn, report

__all__ = ["ProgressFn", "StageProgress", "report"]


class StageProgress(BaseProgressReporter):
    """A cvat-sdk progress reporter for one stage of a job (``lo``..``hi`` of the whole)."""

    def __init__(self, callback: ProgressFn | None, lo: float, hi: float, message: str) -> None:
        super().__init__()
        self.callback = callback
        self.lo, self.hi, self.message = lo, hi, message
        self.total: int | None = None
        self.done = 0

    def start2(self, total: int | None, *, desc: str | None = None, unit: str = "it",
               unit_scale: bool = False, unit_divisor: int = 1000, **kwargs: object) -> None:
        super().start2(total, desc=desc, unit=unit, unit_scale=unit_scale,
                       unit_divisor=unit_divisor, **kwargs)
        self.total = total or None
        self.done = 0
        self._emit(desc)

    def report_status(self, progress: int) -> None:
        super().report_status(progress)
        self.done = int(progress)
        self._emit()

    def advance(self, delta: int) -> None:
        super().advance(delta)
        self.done += int(delta)
        self._emit()

    def finish(self) -> None:
        super().finish()
        if self.total:
            self.done = self.total
        self._emit()

    def fraction(self) -> float:
        part = min(1.0, self.done / self.total) if self.total else 0.0
        return self.lo + (self.hi - self.lo) * part

    def _emit(self, desc: str | None = None) -> None:
        if self.callback is None:
            return
        if self.total:
            self.callback(Progress(self.fraction(), self.message,
                                   done=min(self.done, self.total), total=self.total))
        else:
            self.callback(Progress(self.fraction(), self.message))
