"""The CLI's progress bar, fed by the project's one progress callback (:mod:`data.progress`).

Why its own module: every long command (ingest, demo-pool, score, rank, round, train) draws its
bar the same way, and only on a terminal. When stderr is a pipe or a file, a tqdm bar is a stream
of carriage returns that ends up glued to the next line (often an ``error: ...`` line) in logs, so
no bar is drawn there: the command's summary lines and errors are the whole output.

A stage that counts items (``Progress.done``/``total``) gets a bar in items, e.g.
``demo pool (generating): 600/600 img`` then ``demo pool (ingesting): 600/600 img``; a new stage
or total starts a new bar, so counts never add up across stages. Other tasks get a per-mille bar
of the whole task with the stage message beside it.
"""
from __future__ import annotations

import sys
from typing import IO, Any

from tqdm import tqdm

from data.progress import Progress, ProgressFn


def wants_bars(stream: IO[str] | None = None) -> bool:
    """True when ``stream`` (default stderr) is a terminal: the only place a bar belongs."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):   # a closed or odd stream: no bar
        return False


class TerminalBar:
    """A :data:`data.progress.ProgressFn` that draws tqdm bars on ``stream``; ``close()`` at the end."""

    def __init__(self, desc: str, stream: IO[str], unit: str = "img") -> None:
        self.desc, self.stream, self.unit = desc, stream, unit
        self.bar: Any = None
        self.key: tuple[str, int | None] | None = None

    def __call__(self, p: Progress) -> None:
        counted = p.total is not None
        stage = p.message.split(":")[0].strip() if counted else ""
        key = (stage, p.total if counted else None)
        if self.bar is None or key != self.key:
            self.close()
            self.key = key
            desc = f"{self.desc} ({stage})" if stage else self.desc
            self.bar = tqdm(total=p.total if counted else 1000, desc=desc,
                            unit=self.unit if counted else "‰", file=self.stream, leave=False,
                            dynamic_ncols=True, mininterval=0.2)
        n = int(p.done) if counted else int(round(max(0.0, min(1.0, p.fraction)) * 1000))
        self.bar.update(n - self.bar.n)
        if counted and n >= (p.total or 0):
            self.bar.refresh()   # a finished stage shows its final count (tqdm throttles redraws)
        if not counted and p.message:
            self.bar.set_postfix_str(p.message, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _NoBar:
    def close(self) -> None:
        pass


def progress_bar(desc: str, *, quiet: bool = False, stream: IO[str] | None = None,
                 unit: str = "img") -> tuple[ProgressFn | None, Any]:
    """(callback or None, object with ``close()``): a bar on a terminal, nothing otherwise."""
    stream = sys.stderr if stream is None else stream
    if quiet or not wants_bars(stream):
        return None, _NoBar()
    bar = TerminalBar(desc, stream, unit)
    return bar, bar
