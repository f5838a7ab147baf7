"""Ingestion: bad files become rejects, odd modes become RGB, archives extract safely,
duplicates collapse, re-ingest is idempotent, a killed ingest leaves a consistent project."""
from __future__ import annotations

import io
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tarfile
import textwrap
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.schema import DEFAULT_SCHEMA, UnknownValueError
from data.workspace import Workspace, WorkspaceConfig
from data.archive import ExtractLimits
from data.cache import ImageCache
from data.images import ImageRejected, load_rgb
from data.ingest import IngestError, LabelsFileError, ingest, load_labels_csv, rekey_to_source

from conftest import REPO, require_shared_real


def _png_header_bomb(width: int, height: int) -> bytes:
    """A valid PNG header announcing huge dimensions over a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


GOOD = {"plain.jpg", "cmyk.jpg", "gray.png", "rgba.png", "exif_rotated.jpg", "deep16.png",
        "sub/palette.gif", "sub/photo.webp"}
BAD = {
    "zero.jpg": "zero-byte",
    "truncated.jpg": "truncated",
    "random.jpg": "not an image",
    "notes.txt": "not an image",
    "bomb.png": "decompression bomb",
    "old.pcx": "unsupported format PCX",
    "icon.png": "too small",
}


def make_mixed_folder(root: Path, rng: np.random.Generator) -> Path:
    """Good images in every awkward mode plus one file of each bad kind and one duplicate."""
    root.mkdir(parents=True)
    (root / "sub").mkdir()
    pix = (rng.random((40, 60, 3)) * 255).astype(np.uint8)
    pix[:, :30] = (200, 30, 30)                                   # a red left half
    rgb = Image.fromarray(pix)
    (root / "plain.jpg").write_bytes(_encode(rgb, "JPEG", quality=95))
    (root / "sub" / "copy_of_plain.jpg").write_bytes((root / "plain.jpg").read_bytes())
    (root / "cmyk.jpg").write_bytes(_encode(rgb.convert("CMYK"), "JPEG", quality=95))
    (root / "gray.png").write_bytes(_encode(rgb.convert("L"), "PNG"))
    alpha = np.zeros((40, 60), np.uint8)
    alpha[:, 30:] = 255                                           # left half transparent
    (root / "rgba.png").write_bytes(_encode(Image.fromarray(np.dstack([pix, alpha]), "RGBA"), "PNG"))
    exif = rgb.getexif()
    exif[0x0112] = 6                                              # rotate 90 degrees on display
    (root / "exif_rotated.jpg").write_bytes(_encode(rgb, "JPEG", exif=exif, quality=95))
    deep = Image.fromarray((pix[..., 0].astype(np.uint16) * 257))
    (root / "deep16.png").write_bytes(_encode(deep, "PNG"))
    (root / "sub" / "palette.gif").write_bytes(_encode(rgb.convert("P"), "GIF"))
    (root / "sub" / "photo.webp").write_bytes(_encode(rgb, "WEBP"))
    (root / "zero.jpg").write_bytes(b"")
    good = (root / "plain.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "random.jpg").write_bytes(rng.bytes(2048))
    (root / "notes.txt").write_text("not a picture\n")
    (root / "bomb.png").write_bytes(_png_header_bomb(12_000, 12_000))
    (root / "old.pcx").write_bytes(_encode(rgb, "PCX"))
    (root / "icon.png").write_bytes(_encode(rgb.resize((4, 4)), "PNG"))
    (root / ".DS_Store").write_bytes(b"\0\1junk")                  # hidden files are ignored
    return root


# -- load_rgb --------------------------------------------------------------------------------
def test_load_rgb_normalises_modes(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = make_mixed_folder(tmp_path / "pool", rng)
    plain = load_rgb(folder / "plain.jpg")
    assert plain.shape == (40, 60, 3) and plain.dtype == np.uint8
    assert load_rgb(folder / "exif_rotated.jpg").shape == (60, 40, 3)
    rgba = load_rgb(folder / "rgba.png")
    assert (rgba[:, :30] == 255).all()                            # transparent -> white
    assert rgba[:, 30:].std() > 20
    cmyk = load_rgb(folder / "cmyk.jpg")
    assert abs(cmyk[:, :30].mean(axis=(0, 1)) - np.array([200, 30, 30])).max() < 25
    deep = load_rgb(folder / "deep16.png")
    assert abs(int(deep[..., 0].mean()) - int(plain[..., 0].mean())) < 6   # 16-bit scaled, not clipped
    gray = load_rgb(folder / "gray.png")
    assert (gray[..., 0] == gray[..., 2]).all()


@pytest.mark.parametrize("name,reason", sorted(BAD.items()))
def test_load_rgb_rejects_with_reason(tmp_path: Path, rng: np.random.Generator, name: str,
                                      reason: str) -> None:
    folder = make_mixed_folder(tmp_path / "pool", rng)
    with pytest.raises(ImageRejected, match=reason):
        load_rgb(folder / name)


def test_pixel_cap_is_configurable(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200), (10, 20, 30)).save(path)
    assert load_rgb(path).shape == (200, 300, 3)
    with pytest.raises(ImageRejected, match="decompression bomb"):
        load_rgb(path, max_pixels=50_000)
    with pytest.raises(ImageRejected, match="too small"):
        load_rgb(path, min_side=201)
    with pytest.raises(ImageRejected, match="cannot read"):
        load_rgb(tmp_path / "missing.jpg")


# -- folder ingestion ------------------------------------------------------------------------
def test_mixed_folder_ingest_and_idempotent_reingest(workspace: Workspace, tmp_path: Path,
                                                     rng: np.random.Generator) -> None:
    folder = make_mixed_folder(tmp_path / "pool", rng)
    seen: list[tuple[int, int]] = []
    report = ingest(workspace, folder, workers=1,
                    progress=lambda p: seen.append((p.done, p.total)))
    assert report.added == len(GOOD)
    assert report.duplicates == 1 and report.already_known == 0
    assert dict(report.rejects).keys() == BAD.keys()
    for name, reason in report.rejects:
        assert BAD[name] in reason
    assert report.files == len(GOOD) + len(BAD) + 1
    assert seen[-1] == (report.files, report.files)
    assert "8 added" in report.summary() and "7 rejected" in report.summary()

    with workspace.store() as store:
        images = store.images()
        assert sorted(i.name for i in images) == sorted(GOOD)
        by_name = {i.name: i for i in images}
        assert (by_name["exif_rotated.jpg"].width, by_name["exif_rotated.jpg"].height) == (40, 60)
        assert {Path(r["path"]).name for r in store.rejects()} == set(BAD)
        assert all(i.split in ("train", "val", "test") and i.group_key == i.sha256 for i in images)
        cache = ImageCache(workspace.cache_dir, workspace.config.cache_size)
        rows = cache.read([by_name["rgba.png"].cache_row])
        assert rows.shape == (1, 64, 64, 3)
        assert rows[0, :, :28].min() > 240                       # white where it was transparent
        assert Path(by_name["plain.jpg"].path).is_file()

    again = ingest(workspace, folder, workers=1)
    assert (again.added, again.already_known, again.duplicates) == (0, len(GOOD), 1)
    assert len(again.rejects) == len(BAD)
    with workspace.store() as store:
        assert store.count_images() == len(GOOD)
        assert len(store.rejects()) == len(BAD)                  # upserted, not doubled
    assert len(ImageCache(workspace.cache_dir, 64)) == len(GOOD)  # nothing re-decoded


def test_parallel_ingest_matches_serial(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(80):
        img = Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8))
        img.save(folder / f"img{i:03d}.jpg", quality=90)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    results = {}
    for workers in (1, 2):
        ws = Workspace(tmp_path / f"ws{workers}").init(WorkspaceConfig(cache_size=32))
        report = ingest(ws, folder, workers=workers, batch_size=16)
        assert report.added == 80 and len(report.rejects) == 1
        with ws.store() as store:
            imgs = store.images()
            cache = ImageCache(ws.cache_dir, 32)
            results[workers] = {i.sha256: (i.split, cache.read([i.cache_row])[0].tobytes())
                                for i in imgs}
    assert results[1] == results[2]


# -- ground truth and group keys -------------------------------------------------------------
def test_labels_csv_normalises_and_groups(tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    rows = ["file,color,type,orientation,source"]
    rows += [f"images/f{i}.jpg,,,{'BL' if i % 2 else 'back'},camA" for i in range(120)]
    rows += ["images/x1.jpg,Grey,Pick-Up,,web", "images/x2.jpg,,,,web"]
    csv.write_text("\n".join(rows) + "\n")
    truth, groups = load_labels_csv(csv, DEFAULT_SCHEMA)
    assert truth["images/f1.jpg"] == {"orientation": "back-left"}
    assert truth["images/x1.jpg"] == {"color": "gray", "type": "pickup"}
    assert "images/x2.jpg" not in truth                            # nothing labelled
    # natural order: f0..f49 -> block 0, f50..f99 -> block 1 (not f1, f10, f100 ...)
    assert groups["images/f49.jpg"] == groups["images/f0.jpg"] == "camA#0"
    assert groups["images/f50.jpg"] == "camA#1" and groups["images/f119.jpg"] == "camA#2"
    assert groups["images/x2.jpg"] == "web#0"
    (tmp_path / "images").mkdir()
    rekeyed = rekey_to_source(truth, tmp_path, tmp_path / "images")
    assert rekeyed["x1.jpg"] == {"color": "gray", "type": "pickup"}


def test_labels_csv_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("file,color\nimages/a.jpg,red\nimages/b.jpg,teal\n")
    with pytest.raises(UnknownValueError) as err:
        load_labels_csv(bad, DEFAULT_SCHEMA)
    assert "teal" in str(err.value) and "images/b.jpg" in str(err.value)
    nofile = tmp_path / "nofile.csv"
    nofile.write_text("name,color\na.jpg,red\n")
    with pytest.raises(LabelsFileError, match="'file' column"):
        load_labels_csv(nofile, DEFAULT_SCHEMA)
    with pytest.raises(LabelsFileError, match="cannot read"):
        load_labels_csv(tmp_path / "missing.csv", DEFAULT_SCHEMA)


def test_ground_truth_and_group_keys_are_stored(workspace: Workspace, tmp_path: Path,
                                                rng: np.random.Generator) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(40):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    truth = {f"{i}.png": {"orientation": "back"} for i in range(0, 40, 2)}
    groups = {f"{i}.png": f"cam#{i // 10}" for i in range(40)}
    report = ingest(workspace, folder, ground_truth=truth, group_keys=groups, workers=1)
    assert report.ground_truth == 20
    with workspace.store() as store:
        imgs = store.images()
        gt = store.ground_truth()
        assert len(gt) == 20 and set(map(str, [v["orientation"] for v in gt.values()])) == {"back"}
        for block in range(4):
            members = [i for i in imgs if i.group_key == f"cam#{block}"]
            assert len(members) == 10 and len({i.split for i in members}) == 1
    # ground truth given later for known images is added without re-decoding
    more = {f"{i}.png": {"orientation": "front", "color": "red"} for i in range(1, 40, 2)}
    second = ingest(workspace, folder, ground_truth=more, workers=1)
    assert second.added == 0 and second.ground_truth == 20
    with workspace.store() as store:
        assert len(store.ground_truth()) == 40


def test_duplicate_copies_first_label_wins(workspace: Workspace, tmp_path: Path,
                                           rng: np.random.Generator) -> None:
    folder = make_mixed_folder(tmp_path / "pool", rng)
    truth = {"plain.jpg": {"color": "red"},
             "sub/copy_of_plain.jpg": {"color": "blue", "type": "bus"}}
    for batch in (512, 1):                 # copy pending in the same batch / already committed
        ws = Workspace(tmp_path / f"ws{batch}").init(WorkspaceConfig(cache_size=32))
        report = ingest(ws, folder, ground_truth=truth, workers=1, batch_size=batch)
        assert report.duplicates == 1
        with ws.store() as store:
            assert list(store.ground_truth().values()) == [{"color": "red", "type": "bus"}]
        again = ingest(ws, folder, ground_truth=truth, workers=1)
        assert again.ground_truth == 0     # nothing changed on a re-run
    fixed = {"plain.jpg": {"color": "gray"}}
    assert ingest(ws, folder, ground_truth=fixed, workers=1).ground_truth == 1
    with ws.store() as store:              # a corrected CSV corrects the hidden truth
        assert list(store.ground_truth().values()) == [{"color": "gray", "type": "bus"}]


def test_unknown_ground_truth_value_stops_before_writing(workspace: Workspace, tmp_path: Path,
                                                         rng: np.random.Generator) -> None:
    folder = make_mixed_folder(tmp_path / "pool", rng)
    with pytest.raises(UnknownValueError, match="plain.jpg"):
        ingest(workspace, folder, ground_truth={"plain.jpg": {"color": "teal"}}, workers=1)
    with workspace.store() as store:
        assert store.count_images() == 0


# -- archives --------------------------------------------------------------------------------
def _tar_add(tf: tarfile.TarFile, name: str, data: bytes, **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in attrs.items():
        setattr(info, k, v)
    tf.addfile(info, io.BytesIO(data) if data else None)


def test_tar_gz_safe_extraction(workspace: Workspace, tmp_path: Path,
                                rng: np.random.Generator) -> None:
    folder = make_mixed_folder(tmp_path / "pool", rng)
    archive = tmp_path / "image_test.tar.gz"
    outside = tmp_path / "escaped.jpg"
    big = _encode(Image.fromarray((rng.random((300, 300, 3)) * 255).astype(np.uint8)), "PNG")
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname="image_test")
        _tar_add(tf, "../escaped.jpg", (folder / "plain.jpg").read_bytes())
        _tar_add(tf, "/tmp/absolute.jpg", (folder / "plain.jpg").read_bytes())
        _tar_add(tf, "image_test/link.jpg", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        _tar_add(tf, "image_test/hard.jpg", b"", type=tarfile.LNKTYPE, linkname="image_test/plain.jpg")
        _tar_add(tf, "image_test/dev", b"", type=tarfile.CHRTYPE)
        _tar_add(tf, "image_test/huge.png", big)
    limits = ExtractLimits(max_member_bytes=100_000)
    report = ingest(workspace, archive, workers=1, limits=limits)
    assert report.added == len(GOOD)
    reasons = dict(report.rejects)
    assert "unsafe path" in reasons["image_test.tar.gz:../escaped.jpg"]
    assert "unsafe path" in reasons["image_test.tar.gz:/tmp/absolute.jpg"]
    assert "symlink" in reasons["image_test.tar.gz:image_test/link.jpg"]
    assert "hard link" in reasons["image_test.tar.gz:image_test/hard.jpg"]
    assert "device" in reasons["image_test.tar.gz:image_test/dev"]
    assert "too large" in reasons["image_test.tar.gz:image_test/huge.png"]
    assert "truncated" in reasons["image_test/truncated.jpg"]
    assert not outside.exists() and not Path("/tmp/absolute.jpg").exists()
    extracted = [p for p in workspace.pools_dir.rglob("*") if p.is_symlink()]
    assert extracted == []
    with workspace.store() as store:
        paths = [i.path for i in store.images()]
        assert all(p.startswith("pools/image_test-") for p in paths)   # relative to the workspace
        assert all((workspace.root / p).is_file() for p in paths)
    again = ingest(workspace, archive, workers=1, limits=limits)
    assert again.added == 0 and again.already_known == len(GOOD)
    assert len(again.rejects) == len(report.rejects)                 # extraction reused, same report


def test_zip_extraction_and_total_cap(workspace: Workspace, tmp_path: Path,
                                      rng: np.random.Generator) -> None:
    folder = make_mixed_folder(tmp_path / "pool", rng)
    archive = tmp_path / "pool.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in sorted(GOOD):
            zf.write(folder / name, name)
        zf.writestr("../../evil.jpg", (folder / "plain.jpg").read_bytes())
        link = zipfile.ZipInfo("link.jpg")
        link.external_attr = (0o120777 << 16)
        zf.writestr(link, "/etc/passwd")
    report = ingest(workspace, archive, workers=1)
    assert report.added == len(GOOD)
    reasons = dict(report.rejects)
    assert "unsafe path" in reasons["pool.zip:../../evil.jpg"]
    assert "symlink" in reasons["pool.zip:link.jpg"]
    assert not (tmp_path.parent / "evil.jpg").exists()
    tiny = ExtractLimits(max_total_bytes=2_000)
    with pytest.raises(IngestError, match="total cap"):
        ws2 = Workspace(tmp_path / "ws2").init(WorkspaceConfig(cache_size=32))
        ingest(ws2, archive, workers=1, limits=tiny)
    assert not any((tmp_path / "ws2" / "pools").iterdir())          # nothing half-extracted


def test_bad_sources(workspace: Workspace, tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no such file"):
        ingest(workspace, tmp_path / "missing")
    single = tmp_path / "one.jpg"
    Image.new("RGB", (20, 20)).save(single)
    with pytest.raises(IngestError, match="neither a folder"):
        ingest(workspace, single)
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00not really gzip" * 10)
    with pytest.raises(IngestError, match="archive"):
        ingest(workspace, broken)


# -- crash safety ----------------------------------------------------------------------------
KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from data.workspace import Workspace
    from data.ingest import ingest
    ws = Workspace({ws!r})
    ingest(ws, Path({src!r}), workers=1, batch_size=10,
           progress=lambda p: time.sleep(0.01))
""")


def test_killed_ingest_leaves_consistent_project(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = tmp_path / "pool"
    folder.mkdir()
    n = 300
    for i in range(n):
        Image.fromarray((rng.random((20, 20, 3)) * 255).astype(np.uint8)).save(folder / f"{i:04d}.png")
    ws = Workspace(tmp_path / "ws").init(WorkspaceConfig(cache_size=16))
    script = KILL_SCRIPT.format(repo=str(REPO), ws=str(ws.root), src=str(folder))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    try:
        deadline = time.time() + 120
        count = 0
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
            try:
                conn = sqlite3.connect(ws.db_path, timeout=5)
                count = conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
                conn.close()
            except sqlite3.OperationalError:
                continue
            if count >= 30:
                break
        assert proc.poll() is None, "ingest finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    with ws.store() as store:
        assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert store.conn.execute("PRAGMA foreign_key_check").fetchall() == []
        partial = store.images()
        assert 30 <= len(partial) < n
        cache_rows = len(ImageCache(ws.cache_dir, 16))
        assert all(i.cache_row is not None and i.cache_row < cache_rows for i in partial)
        assert len({i.cache_row for i in partial}) == len(partial)
    report = ingest(ws, folder, workers=1)                         # resume: finishes the job
    assert report.already_known == len(partial) and report.added == n - len(partial)
    with ws.store() as store:
        imgs = store.images()
        assert len(imgs) == n
        cache = ImageCache(ws.cache_dir, 16)
        for rec in imgs[::37]:                                     # every row holds its own image
            expected = np.asarray(Image.open(folder / rec.name).convert("RGB"))
            from data.preprocess import resize_square
            assert np.array_equal(cache.read([rec.cache_row])[0], resize_square(expected, 16))


# -- real data -------------------------------------------------------------------------------
def test_real_orientation_subset_with_group_by_source(workspace: Workspace, tmp_path: Path) -> None:
    real = require_shared_real() / "orientation"
    lines = (real / "labels.csv").read_text().splitlines()
    subset = tmp_path / "orientation"
    (subset / "images").mkdir(parents=True)
    keep = [lines[0]] + lines[1:121]
    for row in keep[1:]:
        name = row.split(",")[0]
        shutil.copy(real / name, subset / name)
    (subset / "labels.csv").write_text("\n".join(keep) + "\n")
    truth, groups = load_labels_csv(subset / "labels.csv", workspace.schema)
    report = ingest(workspace, subset / "images",
                    ground_truth=rekey_to_source(truth, subset, subset / "images"),
                    group_keys=rekey_to_source(groups, subset, subset / "images"), workers=1)
    assert report.added + report.duplicates == 120 and not report.rejects
    assert report.ground_truth == report.added
    with workspace.store() as store:
        imgs = store.images()
        blocks: dict[str, set[str]] = {}
        for i in imgs:
            assert "#" in i.group_key
            blocks.setdefault(i.group_key, set()).add(i.split)
        assert all(len(s) == 1 for s in blocks.values())          # a block never straddles splits
