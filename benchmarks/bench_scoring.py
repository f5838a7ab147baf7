"""Pool scoring and ranking time: score N unlabelled images and rank the next batch, end to end.

What is timed is what ``python -m core rank --rescore`` does: load the model, read every
candidate from the uint8 cache, run the network (PyTorch fp32, ONNX Runtime fp32 or int8),
MC-dropout on the heads for BALD, write predictions/scores to the store and the embeddings to
the model folder, then rank (entropy top-K, and entropy + k-center diversity).

Setup (not timed): a workspace whose cache holds N real crops from ../shared/data/real (repeated
if fewer), all in the train split so every image is a candidate, and an untrained ResNet18 saved
as the current model (timing does not depend on the weights). The int8 file is made with
``models.quantize.quantize_onnx`` directly: an untrained model would not pass the int8 accuracy
gate of ``quantize_export``, and only speed is measured here.

Usage: nice .venv/bin/python benchmarks/bench_scoring.py [--n 11500] [--size 128] [--threads 2]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from data.workspace import Workspace, WorkspaceConfig  # noqa: E402
from data.cache import ImageCache  # noqa: E402
from data.preprocess import resize_square  # noqa: E402

REAL = REPO.parent / "shared" / "data" / "real"


def real_files(n: int) -> list[Path]:
    files: list[Path] = []
    for sub in ("unlabeled_kitti", "orientation", "color", "type"):
        files += sorted((REAL / sub / "images").glob("*.jpg"))
    return files


def build_workspace(root: Path, n: int, size: int) -> tuple[Workspace, str]:
    """A workspace with ``n`` cached images (real crops if available) and no labels."""
    ws = Workspace(root).init(WorkspaceConfig(cache_size=size))
    files = real_files(n) if REAL.is_dir() else []
    cache = ImageCache(ws.cache_dir, size)
    rng = np.random.default_rng(0)
    batch: list[np.ndarray] = []
    names: list[str] = []
    source = f"{len(files)} real crops from {REAL}" if files else "random images (no shared data)"
    with ws.store() as store:
        for i in range(n):
            if files:
                f = files[i % len(files)]
                img = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
                img = resize_square(img, size)
                if i >= len(files):  # repeats: mirror + shift so content hashes differ
                    img = np.ascontiguousarray(np.roll(img[:, ::-1], i // len(files), axis=0))
                name = f"{i:05d}_{f.name}"
            else:
                img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                name = f"{i:05d}.png"
            batch.append(img)
            names.append(name)
            if len(batch) == 512 or i == n - 1:
                rows = cache.append(np.stack(batch))
                with store.transaction():
                    for img_, name_, row in zip(batch, names, rows):
                        store.add_image(path=f"bench/{name_}", name=name_,
                                        sha256=hashlib.sha256(img_.tobytes()).hexdigest(),
                                        width=size, height=size, nbytes=img_.nbytes,
                                        split="train", cache_row=row)
                batch, names = [], []
    return ws, source


def make_model(ws: Workspace, size: int) -> int:
    import torch

    from models.checkpoint import model_meta, save_checkpoint
    from models.network import build_model

    torch.manual_seed(0)
    model, origin = build_model(ws.schema, pretrained=False)
    rel = Path("models") / "bench" / "model.pt"
    save_checkpoint(ws.root / rel, model.eval(), model_meta(ws.schema, size, origin=origin))
    with ws.store() as store:
        return store.add_model(str(rel))


def clear_exports(ws: Workspace, model_id: int) -> None:
    from core.exports import export_dir

    folder = export_dir(ws, model_id)
    for f in folder.glob("*.onnx"):
        f.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=11500)
    ap.add_argument("--size", type=int, default=128, help="cache and model input size (px)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=200)
    ap.add_argument("--backends", default="torch,onnx,int8")
    ap.add_argument("--workdir", default=None, help="reuse/keep the setup workspace here")
    ap.add_argument("--json", default=None, help="write results to this JSON file")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from core.queue import build_queue
    from core.exports import export_dir, export_onnx
    from models.export import FP32_NAME, INT8_NAME

    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_scoring_"))
    t0 = time.perf_counter()
    if (root / "project.db").exists():
        ws, source = Workspace(root), "reused workspace"
        with ws.store() as store:
            model_id = int(store.current_model()["id"])
    else:
        ws, source = build_workspace(root, args.n, args.size)
        model_id = make_model(ws, args.size)
    print(f"setup: {args.n} images ({source}) at {args.size}px in {time.perf_counter() - t0:.1f} s")
    folder = export_dir(ws, model_id)
    if not (folder / FP32_NAME).exists():
        export_onnx(ws, model_id, parity_images=32)
    fp32 = folder / FP32_NAME
    int8 = folder / INT8_NAME
    keep = fp32.with_suffix(".keep")
    fp32.replace(keep)  # hide exports for the torch run
    if "int8" in args.backends and not (folder / (INT8_NAME + ".keep")).exists():
        from models.quantize import quantize_onnx
        from core.exports import pool_images

        _, calib = pool_images(ws, 64, seed=1)
        quantize_onnx(keep, folder / (INT8_NAME + ".keep"), calib, args.size)
    results = []
    load = os.getloadavg()
    for backend in args.backends.split(","):
        for f in (fp32, int8):
            f.unlink(missing_ok=True)
        if backend == "onnx":
            os.link(keep, fp32)
        elif backend == "int8":
            os.link(keep, fp32)
            os.link(folder / (INT8_NAME + ".keep"), int8)
        for diversity in (None, "kcenter"):
            t = time.perf_counter()
            cpu = time.process_time()
            res = build_queue(ws, "entropy", args.top, diversity=diversity, record=False,
                              rescore=diversity is None, model_id=model_id,
                              score_kwargs={"threads": args.threads})
            wall = time.perf_counter() - t
            # CPU seconds of this process (all threads): on a shared machine wall time mostly
            # measures the other jobs; cpu_s / threads estimates the wall time on idle cores.
            cpu_s = time.process_time() - cpu
            row = {"backend": backend, "diversity": diversity, "images": res.candidates,
                   "wall_s": round(wall, 2), "cpu_s": round(cpu_s, 2),
                   **{k: round(v, 2) for k, v in res.timings.items()}}
            if diversity is None:
                row["backend_used"] = res.params["backend"]
            results.append(row)
            print(json.dumps(row))
    for f in (fp32, int8):
        f.unlink(missing_ok=True)
    keep.replace(fp32)
    info = {"n": args.n, "size": args.size, "threads": args.threads, "load_before": load,
            "load_after": os.getloadavg(), "cpu": os.cpu_count(), "results": results,
            "workspace": str(root)}
    print(f"load average before {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}, "
          f"after {info['load_after'][0]:.2f}")
    print("| backend | images | score + rank top-%d: wall s | CPU s | CPU s / threads | "
          "k-center re-rank (s) |" % args.top)
    print("|---|---|---|---|---|---|")
    by = {}
    for r in results:
        by.setdefault(r["backend"], {})[r["diversity"]] = r
    for b, d in by.items():
        print(f"| {b} | {d[None]['images']} | {d[None]['wall_s']:.1f} | {d[None]['cpu_s']:.1f} | "
              f"{d[None]['cpu_s'] / args.threads:.1f} | "
              f"{d.get('kcenter', {}).get('wall_s', float('nan')):.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
