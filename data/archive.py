"""Safe extraction of pool archives (.tar.gz / .tgz / .tar / .zip).

Pools arrive as archives from other people (the seed pool was ``image_test.tar.gz``), so an
archive is untrusted input: members may try to escape the target folder (``../x``, absolute
paths), be links or device files, or expand to far more bytes than they claim. We extract only
regular files, each checked against a path rule and size caps, and record everything skipped.

Extraction goes to a folder named after the archive's content hash, and a marker file is written
last, so re-ingesting the same archive reuses the folder and a killed extraction is redone.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from zlib import error as zlibError  # noqa: N812 - raised by damaged gzip streams

from data.progress import ProgressFn, report

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
DONE_MARKER = ".extracted"
_CHUNK = 1 << 20


class ArchiveError(ValueError):
    """The archive as a whole cannot be used (unreadable, over a total cap)."""


@dataclass(frozen=True)
class ExtractLimits:
    """Caps that bound what one archive may write to disk."""

    max_member_bytes: int = 64 * 1024 * 1024        # one image file
    max_total_bytes: int = 16 * 1024 * 1024 * 1024  # all members together
    max_members: int = 500_000


@dataclass
class ExtractResult:
    root: Path
    files: int = 0
    bytes: int = 0
    reused: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (member name, reason)


def is_archive(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(ARCHIVE_SUFFIXES)


def archive_stem(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "archive"
    return path.stem


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def safe_member_path(name: str) -> PurePosixPath | None:
    """The relative path a member may be written to, or None when it would escape the root."""
    name = name.replace("\\", "/")
    if not name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    if any("\x00" in p for p in parts):
        return None
    return PurePosixPath(*parts)


def _copy_capped(src: BinaryIO, dest: Path, cap: int) -> int:
    """Stream src to dest, refusing more than ``cap`` bytes (declared sizes can lie)."""
    written = 0
    with open(dest, "wb") as out:
        while True:
            block = src.read(_CHUNK)
            if not block:
                break
            written += len(block)
            if written > cap:
                out.close()
                dest.unlink(missing_ok=True)
                raise ArchiveError(f"member expands beyond the {cap:,}-byte cap")
            out.write(block)
    return written


class _Extractor:
    def __init__(self, root: Path, limits: ExtractLimits) -> None:
        self.root = root
        self.limits = limits
        self.result = ExtractResult(root=root)
        self.root_resolved = root.resolve()

    def target(self, name: str) -> Path | None:
        rel = safe_member_path(name)
        if rel is None:
            self.result.skipped.append((name, "unsafe path (absolute or escapes the folder)"))
            return None
        dest = self.root / Path(*rel.parts)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            self.result.skipped.append((name, "path clashes with a file of the same name"))
            return None
        # a folder component could be a symlink made outside our control: refuse to follow it
        if not dest.parent.resolve().is_relative_to(self.root_resolved):
            self.result.skipped.append((name, "unsafe path (escapes through a link)"))
            return None
        return dest

    def admit(self, name: str, declared: int) -> bool:
        if self.result.files >= self.limits.max_members:
            raise ArchiveError(f"archive has more than {self.limits.max_members:,} files")
        if declared > self.limits.max_member_bytes:
            self.result.skipped.append(
                (name, f"member too large ({declared:,} bytes > {self.limits.max_member_bytes:,})"))
            return False
        if self.result.bytes + declared > self.limits.max_total_bytes:
            raise ArchiveError(
                f"archive expands beyond the {self.limits.max_total_bytes:,}-byte total cap")
        return True

    def write(self, name: str, src: BinaryIO, dest: Path) -> None:
        cap = min(self.limits.max_member_bytes,
                  self.limits.max_total_bytes - self.result.bytes)
        try:
            n = _copy_capped(src, dest, cap)
        except ArchiveError as exc:
            self.result.skipped.append((name, str(exc)))
            return
        self.result.files += 1
        self.result.bytes += n


def _extract_tar(archive: Path, ex: _Extractor) -> None:
    try:
        tf = tarfile.open(archive, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"cannot read archive {archive.name}: {exc}") from exc
    with tf:
        try:
            for member in tf:
                if member.isdir():
                    continue
                if not member.isfile():
                    kind = ("symlink" if member.issym() else "hard link" if member.islnk()
                            else "device or special file")
                    ex.result.skipped.append((member.name, f"{kind} not extracted"))
                    continue
                if not ex.admit(member.name, member.size):
                    continue
                dest = ex.target(member.name)
                if dest is None:
                    continue
                src = tf.extractfile(member)
                if src is None:
                    ex.result.skipped.append((member.name, "unreadable member"))
                    continue
                with src:
                    ex.write(member.name, src, dest)
        except (tarfile.TarError, EOFError, OSError, zlibError) as exc:
            raise ArchiveError(f"archive {archive.name} is damaged: {exc}") from exc


def _extract_zip(archive: Path, ex: _Extractor) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"cannot read archive {archive.name}: {exc}") from exc
    with zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            mode = info.external_attr >> 16
            # no file-type bits (DOS-made zips, writestr) means a regular file
            if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
                kind = "symlink" if stat.S_ISLNK(mode) else "device or special file"
                ex.result.skipped.append((info.filename, f"{kind} not extracted"))
                continue
            if info.flag_bits & 0x1:
                ex.result.skipped.append((info.filename, "encrypted member"))
                continue
            if not ex.admit(info.filename, info.file_size):
                continue
            dest = ex.target(info.filename)
            if dest is None:
                continue
            try:
                with zf.open(info) as src:
                    ex.write(info.filename, src, dest)
            except (zipfile.BadZipFile, zlibError, OSError, NotImplementedError, EOFError) as exc:
                dest.unlink(missing_ok=True)
                ex.result.skipped.append((info.filename, f"damaged member: {exc}"))


def extract_archive(archive: Path, pools_dir: Path, *, limits: ExtractLimits | None = None,
                    progress: ProgressFn | None = None) -> ExtractResult:
    """Extract ``archive`` safely into ``pools_dir/<stem>-<hash12>``; reuse a finished one."""
    archive = Path(archive)
    limits = limits or ExtractLimits()
    digest = file_sha256(archive)
    root = Path(pools_dir) / f"{archive_stem(archive)}-{digest[:12]}"
    marker = root / DONE_MARKER
    if marker.is_file():
        try:
            done = json.loads(marker.read_text(encoding="utf-8"))
            skipped = [(str(n), str(r)) for n, r in done.get("skipped", [])]
            return ExtractResult(root=root, files=int(done.get("files", 0)),
                                 bytes=int(done.get("bytes", 0)), reused=True, skipped=skipped)
        except (ValueError, TypeError, OSError):
            pass  # unreadable marker: extract again
    if root.exists():  # an interrupted extraction: start clean
        shutil.rmtree(root)
    root.mkdir(parents=True)
    ex = _Extractor(root, limits)
    report(progress, 0.0, f"extracting {archive.name}")
    try:
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, ex)
        else:
            _extract_tar(archive, ex)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"archive": archive.name, "sha256": digest,
                               "files": ex.result.files, "bytes": ex.result.bytes,
                               "skipped": ex.result.skipped}), encoding="utf-8")
    os.replace(tmp, marker)
    return ex.result
