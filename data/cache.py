"""The preprocessed image cache: every accepted image once, as a square uint8 RGB array.

Why: decoding 11.5k JPEGs for every scoring pass or epoch dominates CPU time. Ingestion decodes
each file once and appends a ``size x size x 3`` array to one flat file per size
(``cache/images_<size>.u8``); the store keeps each image's row number. Reading is a memory map,
so scoring and training slice batches without decoding.

Crash safety: rows are appended before the database row that points at them is committed, so a
crash can leave orphan rows at the end of the file, never a database row pointing past it.

Concurrency: an append holds an exclusive ``flock`` on the cache file from finding the end to
the last byte written, so two processes appending at once (the app's ingest job next to a CLI
ingest) each get the row numbers their own pixels landed on. The lock is released by the OS if
the process dies.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Sequence

import numpy as np


class ImageCache:
    """Append-only array file of ``(size, size, 3)`` uint8 images."""

    def __init__(self, cache_dir: str | Path, size: int) -> None:
        self.size = int(size)
        self.path = Path(cache_dir) / f"images_{self.size}.u8"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.row_bytes = self.size * self.size * 3

    def __len__(self) -> int:
        return self.path.stat().st_size // self.row_bytes if self.path.exists() else 0

    def append(self, images: np.ndarray | Sequence[np.ndarray]) -> list[int]:
        """Append images (each size x size x 3 uint8); returns their row numbers."""
        batch = np.ascontiguousarray(np.stack(list(images)) if not isinstance(images, np.ndarray)
                                     else images, dtype=np.uint8)
        if batch.ndim == 3:
            batch = batch[None]
        if batch.shape[1:] != (self.size, self.size, 3):
            raise ValueError(f"cache rows must be {self.size}x{self.size}x3, got {batch.shape[1:]}")
        with open(self.path, "ab") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # released when the file is closed
            end = fh.seek(0, os.SEEK_END)  # the end *now*, under the lock
            if end % self.row_bytes:  # a torn write from a crash: start at the next whole row
                end += self.row_bytes - end % self.row_bytes
                fh.truncate(end)
                fh.seek(end)
            fh.write(batch.tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        first = end // self.row_bytes
        return list(range(first, first + len(batch)))

    def array(self) -> np.ndarray:
        """A read-only memory map of all rows, shape (N, size, size, 3)."""
        n = len(self)
        if n == 0:
            return np.zeros((0, self.size, self.size, 3), dtype=np.uint8)
        return np.memmap(self.path, dtype=np.uint8, mode="r", shape=(n, self.size, self.size, 3))

    def read(self, rows: Sequence[int]) -> np.ndarray:
        """Copy the given rows into memory, shape (len(rows), size, size, 3)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.zeros((0, self.size, self.size, 3), dtype=np.uint8)
        arr = self.array()
        if rows.min() < 0 or rows.max() >= len(arr):
            raise IndexError(f"cache row out of range (cache holds {len(arr)} rows)")
        return np.asarray(arr[rows])
