"""Ingestion throughput on real crops.

Cases (each into a fresh temporary workspace, default 128 px cache, 2 decoding processes):
  kitti      ../shared/data/real/unlabeled_kitti/images (5,966 64x64 JPEGs), a folder
  pool-11.5k image_test.tar.gz built from kitti + type + the first colour crops (11,500 JPEGs),
             timed from the archive: safe extraction + decode + cache + database
  re-ingest  the same archive again (idempotent: hashes only, nothing added)

Usage (from the repo root; prefix with nice on a shared machine):
    nice .venv/bin/python benchmarks/bench_ingest.py [--workers 2] [--only kitti]
Prints one line per case and the load average before and after; copy them into
docs/BENCHMARKS.md ("Ingestion").
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
REAL = REPO.parent / "shared" / "data" / "real"

from data.workspace import Workspace, WorkspaceConfig  # noqa: E402
from data.ingest import ingest  # noqa: E402


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def build_pool_archive(dest: Path, total: int = 11_500) -> Path:
    """image_test.tar.gz with ``total`` real JPEGs (kitti, then type, then colour)."""
    files: list[Path] = []
    for sub in ("unlabeled_kitti", "type", "color"):
        files += sorted((REAL / sub / "images").glob("*.jpg"))
    files = files[:total]
    if len(files) < total:
        raise SystemExit(f"only {len(files)} real images found under {REAL}")
    archive = dest / "image_test.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=6) as tf:
        for f in files:
            tf.add(f, arcname=f"image_test/{f.parent.parent.name}_{f.name}")
    return archive


def run_case(name: str, ws: Workspace, source: Path, workers: int) -> dict:
    before = load()
    report = ingest(ws, source, workers=workers)
    row = {"case": name, "files": report.files, "added": report.added,
           "already_known": report.already_known, "duplicates": report.duplicates,
           "rejects": len(report.rejects), "seconds": round(report.seconds, 2),
           "img_per_s": round(report.files / report.seconds, 1), "workers": workers,
           "load_before": before, "load_after": load()}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", choices=("kitti", "pool"), default=None)
    ap.add_argument("--cache-size", type=int, default=128)
    args = ap.parse_args()
    if not REAL.is_dir():
        raise SystemExit(f"skipped: real data not available at {REAL}")
    print(f"# {platform.node()} {os.cpu_count()} cores, python {platform.python_version()}, "
          f"load {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        tmp_path = Path(tmp)
        cfg = WorkspaceConfig(cache_size=args.cache_size)
        if args.only in (None, "kitti"):
            ws = Workspace(tmp_path / "ws-kitti").init(cfg)
            run_case("kitti", ws, REAL / "unlabeled_kitti" / "images", args.workers)
        if args.only in (None, "pool"):
            t = time.perf_counter()
            archive = build_pool_archive(tmp_path)
            print(f"# built {archive.name} ({archive.stat().st_size / 1e6:.1f} MB) in "
                  f"{time.perf_counter() - t:.1f} s (not timed below)", flush=True)
            ws = Workspace(tmp_path / "ws-pool").init(cfg)
            run_case("pool-11.5k (tar.gz)", ws, archive, args.workers)
            run_case("re-ingest (tar.gz)", ws, archive, args.workers)


if __name__ == "__main__":
    main()
