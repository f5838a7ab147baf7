"""In-app latency table: one model timed as eager PyTorch, ONNX Runtime fp32 and int8.

The full benchmark (several thread counts, real sets, accuracy) is ``benchmarks/bench_latency.py``;
this is the quick version the Export page runs as a background job on the user's own machine,
saved next to the exports (``latency.json``) so the table survives a reload.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import onnxruntime as ort
import torch

from core.export_files import RESULTS_NAME, export_dir, load_results, results_path  # noqa: F401
from core.exports import load_for_export, pool_images
from data.preprocess import normalise_batch
from data.workspace import Workspace
from models.export import FP32_NAME, INT8_NAME
from models.onnx_contract import INPUT_NAME

def time_calls(fn: Callable[[], object], warmup: int, runs: int) -> dict[str, float]:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times; milliseconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    times.sort()
    return {"median_ms": float(statistics.median(times)), "p10_ms": times[len(times) // 10],
            "p90_ms": times[min(len(times) - 1, (9 * len(times)) // 10)], "runs": runs}


def _median_ms(fn: Callable[[], object], warmup: int, runs: int) -> float:
    return time_calls(fn, warmup, runs)["median_ms"]


def measure_model(ws: Workspace, model_id: int, *, batches: Sequence[int] = (1, 16),
                  runs: int = 20, warmup: int = 3, threads: int | None = None) -> list[dict[str, Any]]:
    """Median milliseconds per call for each backend and batch size; also saved as JSON.

    Backends without a published file (int8 not built yet) are left out of the rows.
    """
    threads = threads or max(1, int(os.environ.get("CARGROUP_JOB_THREADS", os.cpu_count() or 1)))
    torch.set_num_threads(threads)
    model, size = load_for_export(ws, model_id)
    _, images = pool_images(ws, max(batches))
    if len(images) == 0:
        raise ValueError("no cached pool images to time the model on")
    folder = export_dir(ws, model_id)
    sessions = {}
    for name, file in (("ONNX Runtime fp32", FP32_NAME), ("ONNX Runtime int8", INT8_NAME)):
        if (folder / file).is_file():
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            sessions[name] = ort.InferenceSession(str(folder / file), opts,
                                                  providers=["CPUExecutionProvider"])
    rows = []
    for bs in batches:
        x = normalise_batch(images[:bs], size)
        xt = torch.from_numpy(x)

        def eager() -> None:
            with torch.inference_mode():
                model(xt)
        timings = {"PyTorch eager": _median_ms(eager, warmup, runs)}
        for name, sess in sessions.items():
            timings[name] = _median_ms(lambda s=sess: s.run(None, {INPUT_NAME: x}), warmup, runs)
        base = timings["PyTorch eager"]
        for name, ms in timings.items():
            rows.append({"backend": name, "batch": len(x), "threads": threads,
                         "median ms": round(ms, 3), "ms per image": round(ms / len(x), 3),
                         "speed-up vs eager": round(base / ms, 2) if ms else None})
    path = results_path(ws, model_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"measured_at": time.time(), "image_size": size, "rows": rows},
                               indent=2), encoding="utf-8")
    return rows
