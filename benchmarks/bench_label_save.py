"""Save & next on the Label page, core side, on a 14k-image workspace (issue 13: <= 0.3 s server).

Why: the page's own time per image is the store work of one Save & next plus drawing. This
times the store work exactly as app/views/1_Label.py does it after the fragment change, each step
on a fresh connection like the page (``ui.store()`` per step):

- ``save``: ``core.labeling.save_label`` with the model's suggestions (label version, values,
  suggestion outcomes, audit entry);
- ``next``: ``next_image_id`` + ``task_for`` for the next image (built in the Save callback);
- ``draw``: the fragment's queries when it draws that image (``batch_info``, ``round_rank``);
- ``critical``: save + next + draw, what stands between the click and the next image (plus
  Streamlit's own drawing, measured in the browser test tests/test_browser_label.py);
- ``after_draw`` (not in the critical path): the prefetch look-ahead (``upcoming_ids`` +
  ``images``) and the head-refit check (``core.refit_status.due``), which run once the image is
  on the screen.

The store is benchmarks/bench_store.py's synthetic project (rows only, no pixels): N images with
ground truth, predictions and scores for all, 21 rounds (4,500 queued, 4,000 labelled), 6 models.

Usage: nice .venv/bin/python benchmarks/bench_label_save.py [--images 14000] [--saves 200]
       [--out benchmarks/results/label_save.json]
Smoke run: ``--images 5000 --saves 5`` (the build needs at least 4,500 images).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_store import build  # noqa: E402
from core import labeling, refit_status  # noqa: E402
from data.workspace import Workspace  # noqa: E402

GOAL_MS = 300.0
STEPS = ("save", "next", "draw", "critical", "after_draw")


def save_and_next(ws: Workspace, batch: int, image_id: int, task: labeling.LabelTask,
                  thresholds: dict[str, float]) -> tuple[dict[str, float], int | None, Any]:
    """One Save & next as the page does it; returns per-step ms, the next image and its task."""
    schema = ws.schema
    choice = {a: v for a, (v, _p) in task.predictions.items()} or {
        schema.attributes[0]: schema.classes[schema.attributes[0]][0]}
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    with ws.store() as s:
        labeling.save_label(s, schema, image_id, choice, annotator="bench",
                            round_id=task.batch.round_id, suggestions=task.suggestions)
    t1 = time.perf_counter()
    with ws.store() as s:
        nxt = labeling.next_image_id(s, batch)
        nxt_task = labeling.task_for(s, nxt, batch, thresholds) if nxt is not None else None
    t2 = time.perf_counter()
    with ws.store() as s:
        labeling.batch_info(s, batch)
        if nxt is not None:
            s.round_rank(batch, nxt)
    t3 = time.perf_counter()
    with ws.store() as s:
        if nxt is not None:
            s.images(ids=labeling.upcoming_ids(s, batch, skip={nxt}))
    refit_status.due(ws)
    t4 = time.perf_counter()
    t["save"], t["next"], t["draw"] = (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3
    t["critical"], t["after_draw"] = (t3 - t0) * 1e3, (t4 - t3) * 1e3
    return t, nxt, nxt_task


def measure(ws: Workspace, saves: int) -> dict[str, dict[str, float]]:
    thresholds = labeling.prefill_thresholds(ws.config, ws.schema)
    with ws.store() as s:
        batch = labeling.default_batch(s).number
        image_id = labeling.next_image_id(s, batch)
        task = labeling.task_for(s, image_id, batch, thresholds)
    runs: dict[str, list[float]] = {k: [] for k in STEPS}
    for _ in range(saves):
        if image_id is None:
            break
        t, image_id, task = save_and_next(ws, batch, image_id, task, thresholds)
        for k, v in t.items():
            runs[k].append(v)
    return {k: {"n": len(v), "median_ms": statistics.median(v), "max_ms": max(v),
                "p90_ms": sorted(v)[int(0.9 * (len(v) - 1))]} for k, v in runs.items() if v}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=14_000)
    ap.add_argument("--saves", type=int, default=200, help="Save & next steps to time (<= 500)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "label_save.json")
    ap.add_argument("--dir", type=Path, default=None, help="where to build the store")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        t0 = time.perf_counter()
        ws = build(Path(tmp) / "ws", args.images)
        print(f"built {args.images:,} images in {time.perf_counter() - t0:.1f} s", flush=True)
        figures = measure(ws, args.saves)
    for name, f in figures.items():
        flag = "  > goal" if name == "critical" and f["median_ms"] > GOAL_MS else ""
        print(f"  {name:11s} median {f['median_ms']:7.1f} ms  p90 {f['p90_ms']:7.1f} ms  "
              f"max {f['max_ms']:7.1f} ms  (n={f['n']}){flag}")
    result = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "load_avg": os.getloadavg(), "images": args.images, "steps": figures}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}; load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
