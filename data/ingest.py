"""Pool ingestion: folder or archive -> decoded, de-duplicated images in the store and cache.

Every file is read once, hashed (SHA-256 of the bytes), fully decoded (data.images.decode_image)
and resized into the training-resolution cache (data.cache.ImageCache). Decoding runs in worker
processes; the parent alone writes the cache and the database, in batches:

1. cache rows of a batch are appended (and fsynced) first,
2. then one transaction inserts the batch's images, ground truth and rejects.

A kill between 1 and 2 leaves orphan cache rows that nothing points at, never a database row
without pixels, so a killed ingest leaves a consistent project and simply re-running it finishes
the job. Re-ingesting is idempotent: known content hashes are skipped before decoding.
"""
from __future__ import annotations

import csv
import multiprocessing as mp
import os
import re
import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from data.errors import UserError
from data.optional import missing_optional
from data.progress import Progress, ProgressFn
from data.schema import LabelSchema
from data.splits import assign_split
from data.workspace import Workspace
from data.archive import ARCHIVE_SUFFIXES, DONE_MARKER, ArchiveError, ExtractLimits, \
    extract_archive
from data.cache import ImageCache
from data.images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, ImageRejected, decode_image
from data.preprocess import resize_square

GroundTruth = Mapping[str, Mapping[str, str]]

DEFAULT_BATCH = 512          # images per database transaction
DEFAULT_BLOCK = 50           # frames per split group for --group-by source
_SKIP_DIRS = {"__MACOSX", ".git"}


class IngestError(UserError):
    """The source as a whole cannot be ingested (missing, not a folder or archive, damaged)."""


class LabelsFileError(UserError):
    """A labels.csv that cannot be read (missing column, unknown value)."""


@dataclass
class IngestReport:
    """What one ingest run did; ``rejects`` lists (path relative to the source, reason)."""

    source: str
    files: int = 0
    added: int = 0
    duplicates: int = 0
    already_known: int = 0
    ground_truth: int = 0
    rejects: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        parts = [f"{self.files} files", f"{self.added} added",
                 f"{self.already_known} already known", f"{self.duplicates} duplicates",
                 f"{len(self.rejects)} rejected"]
        if self.ground_truth:
            parts.append(f"{self.ground_truth} with ground truth")
        return (f"ingested {self.source}: " + ", ".join(parts)
                + f" in {self.seconds:.1f} s ({self.rate:.0f} files/s)")


# -- labels.csv ------------------------------------------------------------------------------
def empty_source_text(source: str | Path) -> str:
    """What to say when a folder or archive held no file at all (not a silent "0 added")."""
    return f"no files found in {source}; nothing was ingested"


def _natural_key(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def load_labels_csv(path: str | Path, schema: LabelSchema, *,
                    block_size: int = DEFAULT_BLOCK) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Read a ``file,color,type,orientation,source`` CSV into (ground truth, group keys).

    Ground truth is keyed by the ``file`` column (relative to the CSV's folder) and holds only
    the attributes a row labels (empty cell = not labelled). Group keys put each ``source`` into
    contiguous blocks of ``block_size`` files in natural sort order, so consecutive video frames
    (near-duplicates) share a split instead of leaking from train into test.
    """
    path = Path(path)
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise LabelsFileError(f"cannot read labels file {path}: {exc.strerror or exc}") from None
    with fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if "file" not in header:
            raise LabelsFileError(f"{path}: needs a 'file' column (has: {', '.join(header) or 'none'})")
        attrs = [a for a in schema.attributes if a in header]
        if not attrs:
            raise LabelsFileError(f"{path}: no attribute columns ({', '.join(schema.attributes)})")
        truth: dict[str, dict[str, str]] = {}
        by_source: dict[str, list[str]] = defaultdict(list)
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): v for k, v in row.items()}
            name = (row.get("file") or "").strip().replace("\\", "/")
            if not name:
                raise LabelsFileError(f"{path}:{line}: empty 'file' cell")
            values = schema.normalise_label({a: row.get(a) for a in attrs}, item=name)
            if values:
                truth[name] = values
            src = (row.get("source") or "").strip()
            if src:
                by_source[src].append(name)
    groups: dict[str, str] = {}
    for src, names in by_source.items():
        for i, name in enumerate(sorted(set(names), key=_natural_key)):
            groups[name] = f"{src}#{i // block_size}"
    return truth, groups


def rekey_to_source(mapping: Mapping[str, Any], csv_dir: Path, source: Path) -> dict[str, Any]:
    """Re-key CSV paths (relative to the CSV's folder) to paths relative to ``source``.

    Lets ``ingest color/images --ground-truth color/labels.csv`` match ``images/c1.jpg`` rows to
    the file ``c1.jpg``; keys that do not lie under ``source`` are kept unchanged.
    """
    if not source.is_dir():
        return dict(mapping)
    src = source.resolve()
    base = csv_dir.resolve()
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        full = (base / key).resolve()
        out[full.relative_to(src).as_posix() if full.is_relative_to(src) else key] = value
    return out


# -- file discovery -------------------------------------------------------------------------
def _walk(root: Path, exclude: set[Path]) -> list[tuple[Path, str]]:
    """Every candidate file under root as (absolute path, posix path relative to root)."""
    out: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS)
        for fname in sorted(filenames):
            if fname.startswith(".") or fname == DONE_MARKER:
                continue
            full = Path(dirpath) / fname
            if full.resolve() in exclude:
                continue
            out.append((full, full.relative_to(root).as_posix()))
    return out


def _lookup(mapping: Mapping[str, Any] | None, rel: str) -> Any:
    """Value for a relative path; also tries without the first folder (archives often wrap
    their content in one top-level folder that a labels file does not name)."""
    if not mapping:
        return None
    if rel in mapping:
        return mapping[rel]
    parts = PurePosixPath(rel).parts
    if len(parts) > 1:
        return mapping.get(PurePosixPath(*parts[1:]).as_posix())
    return None


# -- worker side ----------------------------------------------------------------------------
_STATE: dict[str, Any] = {}


def _init_worker(known: frozenset[str], size: int, max_pixels: int, min_side: int) -> None:
    _STATE.update(known=known, size=size, max_pixels=max_pixels, min_side=min_side)
    try:  # one process per core already; nested OpenCV threads only add contention
        import cv2
        cv2.setNumThreads(1)
    except ModuleNotFoundError as exc:  # pragma: no cover - OpenCV is optional here
        if missing_optional(exc, "cv2") is None:
            raise


def _init_pool_worker(*args: Any) -> None:
    """Worker processes leave Ctrl-C to the parent, which stops the pool and keeps what is done."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _init_worker(*args)


def _process(task: tuple[str, str]) -> tuple:
    """Read, hash, decode and resize one file. Runs in a worker (or in-process)."""
    full, rel = task
    try:
        data = Path(full).read_bytes()
    except OSError as exc:
        return ("reject", rel, f"cannot read file: {exc.strerror or exc}")
    digest = sha256(data).hexdigest()
    if digest in _STATE["known"]:
        return ("known", rel, digest)
    try:
        rgb = decode_image(data, name=rel, max_pixels=_STATE["max_pixels"],
                           min_side=_STATE["min_side"])
    except ImageRejected as exc:
        return ("reject", rel, exc.reason)
    except Exception as exc:  # noqa: BLE001 - a decoder bug on one file must not stop the run
        return ("reject", rel, f"decoder error: {type(exc).__name__}: {exc}")
    h, w = rgb.shape[:2]
    small = np.ascontiguousarray(resize_square(rgb, _STATE["size"]), dtype=np.uint8)
    return ("ok", rel, digest, w, h, len(data), small)


def _results(tasks: list[tuple[str, str]], workers: int, init_args: tuple) -> Iterator[tuple]:
    """Yield _process results in task order, from a process pool when workers > 1."""
    if workers <= 1 or len(tasks) < 64:
        _init_worker(*init_args)
        for t in tasks:
            yield _process(t)
        return
    # fork: workers inherit the imported modules (torch via data.preprocess costs seconds per
    # spawned process); the pool is started before this process opens the database.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    pool = mp.get_context(method).Pool(workers, initializer=_init_pool_worker,
                                       initargs=init_args)
    try:
        yield from pool.imap(_process, tasks, chunksize=16)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


# -- parent side ----------------------------------------------------------------------------
@dataclass
class _Pending:
    rel: str
    full: Path
    digest: str
    width: int
    height: int
    nbytes: int
    pixels: np.ndarray
    truth: dict[str, str]


def _stored_path(full: Path, ws: Workspace) -> str:
    """Inside the workspace: relative (the workspace may move); elsewhere: absolute."""
    full = full.resolve()
    return full.relative_to(ws.root).as_posix() if full.is_relative_to(ws.root) else str(full)


def resolve_source(ws: Workspace, source: Path, *, limits: ExtractLimits | None = None,
                   progress: ProgressFn | None = None) -> tuple[Path, list[tuple[str, str]]]:
    """The folder to scan for ``source`` (extracting an archive first) and extraction rejects."""
    source = Path(source).expanduser()
    if not source.exists():
        raise IngestError(f"no such file or folder: {source}")
    if source.is_dir():
        return source.resolve(), []
    if not source.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise IngestError(f"{source} is neither a folder nor a {'/'.join(ARCHIVE_SUFFIXES)} archive")
    ws.pools_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = extract_archive(source, ws.pools_dir, limits=limits, progress=progress)
    except ArchiveError as exc:
        raise IngestError(str(exc)) from None
    return result.root, [(f"{source.name}:{name}", reason) for name, reason in result.skipped]


def ingest(ws: Workspace, source: Path, *, ground_truth: GroundTruth | None = None,
           group_keys: Mapping[str, str] | None = None, progress: ProgressFn | None = None,
           workers: int | None = None, batch_size: int = DEFAULT_BATCH,
           max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = DEFAULT_MIN_SIDE,
           exclude: Iterable[Path] = (), limits: ExtractLimits | None = None) -> IngestReport:
    """Ingest a folder, .tar.gz/.tgz/.tar or .zip into the workspace (see module docstring).

    ``ground_truth`` ({relative path: {attribute: class}}) is stored hidden for the simulated
    annotator; ``group_keys`` ({relative path: key}) decide the split instead of the content
    hash. Both are keyed by path relative to the source root. ``progress`` gets
    ``Progress.counted(files done, files)`` (see :mod:`data.progress`). Returns an IngestReport.
    """
    start = time.perf_counter()
    source = Path(source).expanduser()
    schema = ws.schema
    truth = {rel: schema.normalise_label(values, item=rel)
             for rel, values in (ground_truth or {}).items()}
    root, rejects = resolve_source(ws, source, limits=limits, progress=progress)
    report = IngestReport(source=str(source), rejects=list(rejects))
    files = _walk(root, {Path(p).resolve() for p in exclude})
    report.files = len(files)
    if not ws.exists:
        ws.init()
    cfg = ws.config
    source_id = str(source.resolve())
    cache = ImageCache(ws.cache_dir, cfg.cache_size)
    with ws.store() as store:
        known = store.known_hashes()
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    init_args = (frozenset(known), cfg.cache_size, max_pixels, min_side)
    results = _results([(str(f), rel) for f, rel in files], workers, init_args)
    full_of = {rel: f for f, rel in files}
    pending: list[_Pending] = []
    pending_rejects: list[tuple[str, str]] = list(rejects)
    seen: dict[str, str] = {}                   # hash -> first rel path in this run
    truth_updates: dict[str, dict[str, str]] = {}   # stored image hash -> given labels (override)
    truth_fills: dict[str, dict[str, str]] = {}     # duplicate copies' labels (fill gaps only)
    done = 0
    store = None
    try:
        first = next(results, None)  # starts the pool before the database is opened
        store = ws.store()

        def flush() -> None:
            if not pending and not pending_rejects:
                return
            rows = cache.append(np.stack([p.pixels for p in pending])) if pending else []
            with store.transaction():
                for p, row in zip(pending, rows):
                    group = _lookup(group_keys, p.rel) or p.digest
                    split = assign_split(group, cfg.split_fractions, cfg.seed)
                    image_id, created = store.add_image(
                        path=_stored_path(p.full, ws), name=p.rel, sha256=p.digest,
                        width=p.width, height=p.height, nbytes=p.nbytes, split=split,
                        group_key=group, source=source_id, cache_row=row)
                    known[p.digest] = image_id
                    if p.truth:
                        store.set_ground_truth(image_id, p.truth)
                for rel, reason in pending_rejects:
                    where = full_of.get(rel)
                    store.add_reject(str(where.resolve()) if where else rel, reason, source_id)
            pending.clear()
            pending_rejects.clear()

        stream = results if first is None else _chain(first, results)
        for res in stream:
            kind, rel = res[0], res[1]
            done += 1
            if kind == "reject":
                report.rejects.append((rel, res[2]))
                pending_rejects.append((rel, res[2]))
            else:
                digest = res[2]
                label = _lookup(truth, rel) or {}
                if digest in seen or (kind == "ok" and digest in known):
                    report.duplicates += 1
                    _merge_truth(pending, truth_fills, digest, label)
                elif kind == "known":
                    report.already_known += 1
                    seen[digest] = rel
                    if label:
                        truth_updates.setdefault(digest, {}).update(label)
                else:
                    _, _, _, w, h, nbytes, pixels = res
                    seen[digest] = rel
                    pending.append(_Pending(rel, full_of[rel], digest, w, h, nbytes, pixels,
                                            dict(label)))
                    report.added += 1
                    report.ground_truth += bool(label)
            if len(pending) >= batch_size or len(pending_rejects) >= batch_size:
                flush()
            if progress is not None:
                progress(Progress.counted(done, len(files)))
        flush()
        report.ground_truth += _apply_truth_updates(store, known, truth_updates, truth_fills)
    except KeyboardInterrupt:
        if store is not None:
            flush()  # what was decoded is complete: keep it, then stop
        raise
    finally:
        close = getattr(results, "close", None)
        if close:
            close()
        if store is not None:
            store.close()
    report.seconds = time.perf_counter() - start
    return report


def _chain(first: tuple, rest: Iterator[tuple]) -> Iterator[tuple]:
    yield first
    yield from rest


def _merge_truth(pending: list[_Pending], updates: dict[str, dict[str, str]], digest: str,
                 label: Mapping[str, str]) -> None:
    """A duplicate file's ground truth fills attributes its first copy did not have."""
    if not label:
        return
    for p in pending:
        if p.digest == digest:
            p.truth = {**label, **p.truth}
            return
    current = updates.setdefault(digest, {})
    for attr, value in label.items():
        current.setdefault(attr, value)


def _apply_truth_updates(store: Any, known: Mapping[str, int],
                         updates: Mapping[str, Mapping[str, str]],
                         fills: Mapping[str, Mapping[str, str]]) -> int:
    """Set ground truth for images stored before this batch; returns how many changed.

    ``updates`` (labels given for an already known file) replace per attribute: re-ingesting
    with a corrected CSV corrects the ground truth. ``fills`` (labels of a duplicate copy) only
    fill attributes the first copy lacked: the first copy in sorted order wins a conflict.
    """
    if not updates and not fills:
        return 0
    ids = {known[d] for d in (*updates, *fills) if d in known}
    existing = store.ground_truth(ids)
    changed = 0
    with store.transaction():
        for digest in set(updates) | set(fills):
            image_id = known.get(digest)
            if image_id is None:
                continue
            before = existing.get(image_id, {})
            merged = {**fills.get(digest, {}), **before, **updates.get(digest, {})}
            if merged != before:
                store.set_ground_truth(image_id, merged)
                changed += 1
    return changed
