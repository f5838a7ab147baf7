"""What mirror views cost at inference: batch-1 latency with and without them, same run.

A network with mirror views (``MultiHeadNet(mirror_perms=...)``, ``train --mirror-views``)
runs its backbone twice per image in eval mode (the image and its mirror). This times both
variants of the same pretrained weights as eager PyTorch and as the published ONNX file on
ONNX Runtime (CPU, fp32), so the ratio is measured, not assumed. Run alone on an idle machine::

    nice .venv/bin/python benchmarks/bench_mirror_latency.py --backbone efficientnet_lite0
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.latency import time_calls  # noqa: E402
from data.balance import mirror_permutations  # noqa: E402
from data.preprocess import normalise_batch  # noqa: E402
from data.schema import DEFAULT_SCHEMA  # noqa: E402
from models.export import INPUT_NAME, publish_onnx  # noqa: E402
from models.network import build_model  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/mirror_latency.json"))
    args = p.parse_args()
    load = os.getloadavg()
    torch.set_num_threads(args.threads)
    images = (np.random.default_rng(0).random((16, args.size, args.size, 3)) * 255).astype(np.uint8)
    x = normalise_batch(images[:1], args.size)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, perms in (("plain", None), ("mirror views", mirror_permutations(DEFAULT_SCHEMA))):
            torch.manual_seed(0)
            model, origin = build_model(DEFAULT_SCHEMA, backbone=args.backbone, mirror_perms=perms)
            model.eval()
            path, _ = publish_onnx(model, Path(tmp) / name.replace(" ", "_"), images, args.size)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            xt = torch.from_numpy(x)

            def eager() -> None:
                with torch.inference_mode():
                    model(xt)
            rows[name] = {
                "PyTorch eager": time_calls(eager, 10, args.runs)["median_ms"],
                "ONNX Runtime fp32": time_calls(lambda: sess.run(None, {INPUT_NAME: x}), 10,
                                                args.runs)["median_ms"]}
            print(name, {k: round(v, 2) for k, v in rows[name].items()}, flush=True)
    ratio = {k: rows["mirror views"][k] / rows["plain"][k] for k in rows["plain"]}
    print("ratio", {k: round(v, 2) for k, v in ratio.items()})
    result = {"backbone": args.backbone, "origin": origin.sentence(), "size": args.size,
              "threads": args.threads, "batch": 1, "runs": args.runs, "median_ms": rows,
              "ratio": ratio, "loadavg_start": load, "loadavg_end": os.getloadavg(),
              "machine": {"nproc": os.cpu_count(), "cpu": platform.processor() or platform.machine()}}
    args.out.write_text(json.dumps(result, indent=2))
    print(f"load average start {load}, end {os.getloadavg()}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
