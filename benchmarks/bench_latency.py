"""CPU latency of the exported model: eager PyTorch vs ONNX Runtime fp32 vs int8, one run, one machine.

    nice .venv/bin/python benchmarks/bench_latency.py                  # real sets, brief training
    nice .venv/bin/python benchmarks/bench_latency.py --workspace DIR  # a workspace's current model
    nice .venv/bin/python benchmarks/bench_latency.py --backbone resnet18 efficientnet_lite0

Default: builds a workspace from ``../shared/data/real`` (color, type, orientation; each set
labels one head; GTI orientation frames split by contiguous blocks, color by its own train/test
column), trains the product's network briefly on ``--backbone`` (ResNet18 from scratch unless
``--weights`` or torch's hub cache has its ImageNet file; EfficientNet-Lite0 from its shipped
ImageNet weights),
exports it through ``models.export`` (parity gate) and ``models.quantize`` (int8 QDQ, calibrated
on pool images, per-head test accuracy fp32 vs int8). Then times, in this one process, the three
backends at batch 1 and batch 64 with the same intra-op thread count: untimed warm-up calls, then
the median of many timed calls. With several ``--backbone`` names, one workspace holds one model
per backbone and every backbone is timed in the same run, interleaved per thread count, so the
backbone-to-backbone ratios come from one run. Prints markdown tables (and writes JSON with ``--json``); the
load average before and after is printed because the machine may be shared.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from core.latency import time_calls  # noqa: E402
from data.workspace import Workspace, WorkspaceConfig  # noqa: E402
from data.cache import ImageCache  # noqa: E402
from data.preprocess import normalise_batch, resize_square  # noqa: E402

REAL = REPO.parent / "shared" / "data" / "real"


def load_avg() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# -- a workspace from the real sets -------------------------------------------------------------
def _split_rows(folder: str, rows: list[dict], per_set: tuple[int, int, int],
                rng: np.random.Generator) -> dict[str, list[dict]]:
    """train/val/test rows of one real set without leaking near-duplicates into test."""
    n_train, n_val, n_test = per_set
    if folder == "color":  # the set's own train/test column
        test = [r for r in rows if r["source"] == "test"]
        rest = [r for r in rows if r["source"] != "test"]
    elif folder == "orientation":  # GTI video frames: last 20% of each source's file order is test
        test, rest = [], []
        for src in sorted({r["source"] for r in rows}):
            group = sorted((r for r in rows if r["source"] == src), key=lambda r: r["file"])
            cut = int(len(group) * 0.8)
            rest += group[:cut]
            test += group[cut:]
    else:  # distinct photos: a seeded random split
        order = rng.permutation(len(rows))
        test = [rows[i] for i in order[:len(rows) // 5]]
        rest = [rows[i] for i in order[len(rows) // 5:]]
    test = [test[i] for i in sorted(rng.choice(len(test), min(n_test, len(test)), replace=False))]
    pick = rng.choice(len(rest), min(n_train + n_val, len(rest)), replace=False)
    rest = [rest[i] for i in pick]
    return {"train": rest[n_val:], "val": rest[:n_val], "test": test}


def build_real_workspace(root: Path, size: int, per_set: tuple[int, int, int], seed: int = 0) -> Workspace:
    """Decode, resize (data.preprocess) and cache a subset of each real set with its labels."""
    ws = Workspace(root).init(WorkspaceConfig(cache_size=size))
    cache = ImageCache(ws.cache_dir, size)
    rng = np.random.default_rng(seed)
    with ws.store() as store:
        for folder in ("color", "type", "orientation"):
            with open(REAL / folder / "labels.csv", newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
            for split, chosen in _split_rows(folder, rows, per_set, rng).items():
                images, keep = [], []
                for r in chosen:
                    img = cv2.imread(str(REAL / folder / r["file"]))
                    if img is None:
                        continue
                    images.append(resize_square(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), size))
                    keep.append(r)
                cache_rows = cache.append(np.stack(images))
                with store.transaction():
                    for r, img, row in zip(keep, images, cache_rows):
                        image_id, created = store.add_image(
                            path=str(REAL / folder / r["file"]), name=Path(r["file"]).name,
                            sha256=hashlib.sha256(img.tobytes() + folder.encode()).hexdigest(),
                            width=size, height=size, nbytes=img.nbytes, split=split,
                            source=f"{folder}:{r['source']}", cache_row=row)
                        if created:
                            store.add_label(image_id, {folder: r[folder]}, source="import")
    return ws


# -- timing --------------------------------------------------------------------------------------
def ort_session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def measure(model: torch.nn.Module, fp32: Path, int8: Path, images: np.ndarray, size: int,
            threads: int, batches: list[int], warmup: int, runs: dict[int, int]) -> list[dict]:
    torch.set_num_threads(threads)
    sessions = {"ONNX Runtime fp32": ort_session(fp32, threads),
                "ONNX Runtime int8": ort_session(int8, threads)}
    results = []
    for bs in batches:
        x = normalise_batch(images[:bs], size)
        xt = torch.from_numpy(x)
        row = {"batch": bs, "threads": threads}

        def eager() -> None:
            with torch.inference_mode():
                model(xt)
        row["PyTorch eager fp32"] = time_calls(eager, warmup, runs[bs])
        for name, sess in sessions.items():
            row[name] = time_calls(lambda s=sess: s.run(None, {"image": x}), warmup, runs[bs])
        results.append(row)
        print(f"  threads={threads} batch={bs}: " + ", ".join(
            f"{k} {v['median_ms']:.2f} ms" for k, v in row.items() if isinstance(v, dict)), flush=True)
    return results


def latency_table(rows: list[dict]) -> str:
    names = ["PyTorch eager fp32", "ONNX Runtime fp32", "ONNX Runtime int8"]
    out = ["| backbone | threads | batch | " + " | ".join(f"{n} (ms)" for n in names)
           + " | ORT fp32 speed-up | int8 speed-up | int8 ms/image |",
           "|---|---|---|" + "---|" * (len(names) + 3)]
    for r in rows:
        eager = r[names[0]]["median_ms"]
        out.append(f"| {r.get('backbone', '')} | {r['threads']} | {r['batch']} | "
                   + " | ".join(f"{r[n]['median_ms']:.2f}" for n in names)
                   + f" | {eager / r[names[1]]['median_ms']:.2f}x | {eager / r[names[2]]['median_ms']:.2f}x"
                   + f" | {r[names[2]]['median_ms'] / r['batch']:.2f} |")
    return "\n".join(out)


def prepare_model(ws: Workspace, model_id: int, calibration: int) -> dict:
    """Export one recorded model (parity gate), make its int8 file (measured, not gated)."""
    from core.exports import export_onnx, load_parity, quantize_export
    from core.registry import load_model

    model, meta = load_model(ws, model_id)
    fp32 = export_onnx(ws, model_id, parity_images=64)
    int8, int8_report = quantize_export(ws, model_id, calibration=calibration,
                                        min_agreement=0.0, max_drop=1.0)  # measure, do not gate
    print(f"\n{meta.get('backbone', 'resnet18')}: int8 vs fp32 on the test split:\n"
          + int8_report.table(), flush=True)
    return {"model": model.eval(), "fp32": fp32, "int8": int8, "model_id": model_id,
            "size": int(meta.get("image_size", 128)), "backbone": meta.get("backbone", "resnet18"),
            "weights_origin": meta.get("weights_origin"), "parity": load_parity(ws, model_id),
            "int8_report": int8_report.to_dict(),
            "files": {"fp32_bytes": fp32.stat().st_size, "int8_bytes": int8.stat().st_size}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", default=None, help="use this workspace's current model (skip training)")
    ap.add_argument("--work", default=None, help="folder for the generated workspace (default: a temp dir)")
    ap.add_argument("--size", type=int, default=128, help="input size (default: 128, the product's)")
    ap.add_argument("--per-set", default="1200,150,300", help="train,val,test images per real set")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--backbone", nargs="+", default=["resnet18"],
                    help="one or more of resnet18, efficientnet_lite0 (all timed in this run)")
    ap.add_argument("--weights", default=None, help="local weights file for ResNet18")
    ap.add_argument("--calibration", type=int, default=300)
    ap.add_argument("--threads", default="1,2", help="intra-op thread counts to time (default: 1,2)")
    ap.add_argument("--batches", default="1,64", help="batch sizes to time (default: 1,64)")
    ap.add_argument("--runs-b1", type=int, default=200)
    ap.add_argument("--runs-b64", type=int, default=15)
    ap.add_argument("--runs", type=int, default=None,
                    help="timed calls for every batch size (overrides --runs-b1/--runs-b64; "
                         "e.g. 3 for a smoke run)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json", default=None, help="write all figures to this JSON file")
    args = ap.parse_args()

    from core.exports import export_dir, pool_images, resolve_model_id
    from models.backbones import check_name

    for name in args.backbone:
        check_name(name)
    report: dict = {"machine": {"cpu": platform.processor() or platform.machine(),
                                "cores": os.cpu_count(), "torch": torch.__version__,
                                "onnxruntime": ort.__version__},
                    "load_avg_start": load_avg()}
    print(f"load average (1/5/15 min) at start: {report['load_avg_start']}", flush=True)
    t0 = time.perf_counter()
    model_ids: list[int] = []
    if args.workspace:
        ws = Workspace(args.workspace)
        report["model"] = f"current model of {ws.root}"
        model_ids = [resolve_model_id(ws, None)]
    else:
        if not REAL.is_dir():
            print(f"real data not found at {REAL}; pass --workspace", file=sys.stderr)
            return 2
        from core.training import train_and_promote
        from models.backbones import weights_status
        from models.train import TrainConfig

        root = Path(args.work or tempfile.mkdtemp(prefix="bench-latency-")) / "ws"
        per_set = tuple(int(v) for v in args.per_set.split(","))
        ws = build_real_workspace(root, args.size, per_set)  # type: ignore[arg-type]
        print(f"workspace {root} built in {time.perf_counter() - t0:.0f} s", flush=True)
        report["training"] = {}
        for name in args.backbone:
            t1 = time.perf_counter()
            weights = args.weights if name == "resnet18" else None
            status = weights_status(name, weights)
            print(f"{name} weights: {status.sentence()}", flush=True)
            outcome = train_and_promote(ws, TrainConfig(
                epochs=args.epochs, image_size=args.size, backbone=name, weights=weights,
                pretrained=status.pretrained,
                num_threads=max(int(t) for t in args.threads.split(","))))
            result = outcome.train
            model_ids.append(int(outcome.model_id))
            report["training"][name] = {
                "epochs": args.epochs, "seconds": round(time.perf_counter() - t1),
                "train_images": result.train_images, "val_acc": result.val_acc,
                "per_set": per_set, "origin": result.origin}
            print(f"{name}: trained in {report['training'][name]['seconds']} s: "
                  f"val acc {result.val_acc}", flush=True)
        report["model"] = (f"trained here: {args.epochs} epochs per backbone on real images "
                           f"({per_set} train/val/test per set), {args.size} px")

    prepared = [prepare_model(ws, mid, args.calibration) for mid in model_ids]
    _, images = pool_images(ws, 64, seed=7)
    threads = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    runs = {b: args.runs if args.runs is not None else (args.runs_b1 if b == 1 else args.runs_b64)
            for b in batches}
    rows = []
    for th in threads:          # interleaved: every backbone at this thread count, then the next
        for m in prepared:
            for row in measure(m["model"], m["fp32"], m["int8"], images, m["size"], th, batches,
                               args.warmup, runs):
                row["backbone"] = m["backbone"]
                rows.append(row)
    report["latency"] = rows
    report["load_avg_end"] = load_avg()
    report["models"] = [{k: v for k, v in m.items() if k != "model"} for m in prepared]
    for m in prepared:
        print(f"\n{m['backbone']} (model {m['model_id']}, {m['weights_origin']}): "
              f"input {m['size']} px; parity max|d| {m['parity']['max_abs_diff']}; ONNX sizes: "
              f"fp32 {m['files']['fp32_bytes'] / 2**20:.1f} MiB, "
              f"int8 {m['files']['int8_bytes'] / 2**20:.1f} MiB; "
              f"exports in {export_dir(ws, m['model_id'])}")
    print(latency_table(rows))
    print(f"load average (1/5/15 min): start {report['load_avg_start']}, end {report['load_avg_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
