"""int8 fidelity per backbone: top-1 agreement and max |prob diff| of int8 vs fp32 ONNX, per head.

    nice .venv/bin/python benchmarks/bench_int8_fidelity.py --work /tmp/int8fid \
        --backbone resnet18 efficientnet_lite0 --size 96 --per-set 200,40,150 --epochs 2

Why this script: the int8 gate (``models.quantize``, 90 % top-1 agreement per head) refused
EfficientNet-Lite0. This measures, on small real images from ``../shared/data/real``, a briefly
trained model of each backbone (Lite0 from its shipped ImageNet weights, ResNet18 from ImageNet
weights when torch's hub cache has them, else random init) and quantizes its published fp32
export with both weight types (int8 = U8S8, uint8 = U8U8; everything else as the product does:
static QDQ, per-channel, uint8 activations, MinMax on train/val pool images). Each int8 file is
run twice: with onnxruntime's fused int8 kernels (what the product runs) and with graph
optimisation off (Q/DQ + float kernels: the quantization error alone), so a kernel problem
(saturation) shows up as a gap between the two. These are accuracy figures, not timings.
A workspace under ``--work/<backbone>/ws`` that already has a current model is reused.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnxruntime.quantization import QuantType  # noqa: E402

from benchmarks.bench_latency import REAL, build_real_workspace, load_avg  # noqa: E402
from data.preprocess import normalise_batch  # noqa: E402
from data.workspace import Workspace  # noqa: E402

WEIGHT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}


def trained_workspace(root: Path, backbone: str, size: int, per_set: tuple[int, int, int],
                      epochs: int, threads: int) -> Workspace:
    """The workspace's current model, training one briefly first when there is none."""
    from core.training import train_and_promote
    from models.backbones import weights_status
    from models.train import TrainConfig

    if (root / "ws").exists():
        ws = Workspace(root / "ws")
        with ws.store() as store:
            if store.current_model() is not None:
                return ws
    ws = build_real_workspace(root / "ws", size, per_set)
    status = weights_status(backbone)
    print(f"{backbone}: {status.sentence()}", flush=True)
    result = train_and_promote(ws, TrainConfig(epochs=epochs, image_size=size, backbone=backbone,
                                               pretrained=status.pretrained,
                                               num_threads=threads)).train
    print(f"{backbone}: trained {epochs} epochs on {result.train_images} images, "
          f"val acc {result.val_acc}", flush=True)
    return ws


def run_unfused(path: Path, x: np.ndarray, threads: int) -> dict[str, np.ndarray]:
    """Outputs with graph optimisation off: Q/DQ pairs around float kernels."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"image": x})))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="folder for the workspaces (reused when present)")
    ap.add_argument("--backbone", nargs="+", default=["resnet18", "efficientnet_lite0"])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--per-set", default="200,40,150", help="train,val,test images per real set")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--calibration", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not REAL.is_dir():
        print(f"real data not found at {REAL}; nothing measured", file=sys.stderr)
        return 0

    from core.exports import (export_dir, export_onnx, labelled_test_split, pool_images,
                              resolve_model_id)
    from models.onnx_runtime import OnnxClassifier
    from models.quantize import compare_models, default_weight_type, quantize_onnx

    per_set = tuple(int(v) for v in args.per_set.split(","))
    out: dict = {"load_avg_start": load_avg(), "default_weight_type": str(default_weight_type()),
                 "rows": []}
    print(f"load average at start: {out['load_avg_start']}; product default weight type here: "
          f"{out['default_weight_type']}", flush=True)
    lines = ["| backbone | weights | kernels | head | agreement | max abs prob diff | "
             "fp32 acc | int8 acc |", "|---|---|---|---|---|---|---|---|"]
    for backbone in args.backbone:
        ws = trained_workspace(Path(args.work) / backbone, backbone, args.size, per_set,  # type: ignore[arg-type]
                               args.epochs, args.threads)
        model_id = resolve_model_id(ws, None)
        fp32 = export_onnx(ws, model_id, parity_images=16)
        calib = np.concatenate([pool_images(ws, args.calibration, split=s, seed=1)[1]
                                for s in ("train", "val")])[:args.calibration]
        images, labels = labelled_test_split(ws, OnnxClassifier(fp32).schema)
        x = normalise_batch(images, OnnxClassifier(fp32).image_size)
        ref = run_unfused(fp32, x, args.threads)
        for wname, wtype in WEIGHT_TYPES.items():
            int8 = export_dir(ws, model_id) / f"fidelity-{wname}.onnx"
            quantize_onnx(fp32, int8, calib, args.size, weight_type=wtype)
            rep = compare_models(fp32, int8, images, labels, min_agreement=0.0, max_drop=1.0)
            unf = run_unfused(int8, x, args.threads)
            for head in rep.agreement:
                p32 = np.exp(ref[head] - ref[head].max(1, keepdims=True))
                p32 /= p32.sum(1, keepdims=True)
                p8 = np.exp(unf[head] - unf[head].max(1, keepdims=True))
                p8 /= p8.sum(1, keepdims=True)
                rows = [("fused (product)", rep.agreement[head], rep.max_abs_prob_diff[head],
                         rep.accuracy_fp32[head], rep.accuracy_int8[head]),
                        ("unfused (Q/DQ + float)", float(np.mean(ref[head].argmax(1) == unf[head].argmax(1))),
                         float(np.abs(p32 - p8).max()), None, None)]
                for kernels, agree, dprob, a32, a8 in rows:
                    out["rows"].append({"backbone": backbone, "weights": wname, "kernels": kernels,
                                        "head": head, "agreement": agree, "max_abs_prob_diff": dprob,
                                        "acc_fp32": a32, "acc_int8": a8})
                    fmt = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
                    lines.append(f"| {backbone} | {wname} | {kernels} | {head} | {agree:.3f} | "
                                 f"{dprob:.3f} | {fmt(a32)} | {fmt(a8)} |")
            int8.unlink(missing_ok=True)
        print("\n".join(lines[-12:]), flush=True)
    out["load_avg_end"] = load_avg()
    print("\n" + "\n".join(lines))
    print(f"eval: labelled test images per set {per_set[2]}, all heads on every test image; "
          f"load average start {out['load_avg_start']}, end {out['load_avg_end']}; "
          f"cpu cores {os.cpu_count()}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
