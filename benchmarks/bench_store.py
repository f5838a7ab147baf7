"""Store at scale: the interactive queries against pools of 10k, 100k and 1,000,000 images.

Why: the Label page, status, the learning curve and queue recording run on every click; their
cost must follow what the user works on (a batch, the labels, the rounds), not the pool's size.
Goal (issue 11): every interactive query <= 50 ms at 1M images, and flat from 10k to 1M.

Each size gets a synthetic store (rows only, no pixels), bulk-inserted in one transaction:
- ``images``: N rows, splits 70/10/20;
- hidden ground truth for every image (a demo pool's worst case) and the current model's
  predictions (3 heads) and entropy scores (3 heads) for every image;
- 21 rounds (a 500-image seed round, then 20 x 200), the first 4,000 queued images labelled
  (3 attributes each; 200 of them re-labelled once), 6 models with test metrics, 20 jobs.
Rounds, labels and models are the same at every N, so a flat line means "independent of N".

Timed (median and max of ``--repeat`` runs, ms), each on a fresh connection like a page load:
- ``open``: open the store (connect, pragmas, schema check);
- Label page: ``count_images``, ``batches``, ``default_batch``, ``round_items``,
  ``next_image_id``, ``task_for`` and ``label_page`` (all of them, as app/views/1_Label.py does
  per load), plus ``save_label`` (one label version);
- ``status``: ``ProjectStore.status_counts`` (CLI ``status``, Overview and Train pages);
- ``learning_curve``: core.dashboard.learning_curve;
- ``queue_record``: core.queue._record, the IMMEDIATE transaction that checks 200 picks and
  records them as a round (scoring and ranking happen before it, without a lock);
- ``candidates`` (not interactive, shown for scale): core.queue.candidate_ids, the queue job's
  read of every unlabelled image before scoring.

Usage: nice .venv/bin/python benchmarks/bench_store.py [--sizes 10000 100000 1000000]
       [--repeat 15] [--out benchmarks/results/store_scale.json]
Building is most of the run: ~1 min for 100k on a busy 2-core machine, a few minutes for 1M
(about 0.9 GB of disk; ``--dir`` chooses where). Smoke run: ``--sizes 10000 --repeat 3``.
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
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from core import labeling  # noqa: E402
from core.dashboard import learning_curve  # noqa: E402
from core.queue import _record, candidate_ids  # noqa: E402
from data.schema import default_schema  # noqa: E402
from data.store import ProjectStore  # noqa: E402
from data.workspace import Workspace, WorkspaceConfig  # noqa: E402

SEED_ROUND = 500
ROUNDS = 20
ROUND_SIZE = 200
LABELLED = 4000
RELABELLED = 200
MODELS = 6
GOAL_MS = 50.0
INTERACTIVE = ("open", "count_images", "batches", "default_batch", "round_items",
               "next_image_id", "task_for", "label_page", "save_label", "status",
               "learning_curve", "queue_record")


def build(root: Path, n: int, seed: int = 0) -> Workspace:
    """A workspace whose store holds the synthetic project described in the module docstring."""
    ws = Workspace(root).init(WorkspaceConfig(cache_size=64))
    schema = default_schema()
    attrs = list(schema.attributes)
    classes = {a: list(schema.classes[a]) for a in attrs}
    rng = np.random.default_rng(seed)
    t = time.time()
    store = ProjectStore(ws.db_path)
    conn = store.conn
    conn.execute("PRAGMA synchronous=OFF")
    truth_idx = {a: rng.integers(0, len(classes[a]), n) for a in attrs}
    splits = np.array(["train"] * 7 + ["val"] + ["test"] * 2)[rng.integers(0, 10, n)]
    with store.transaction():
        conn.executemany(
            "INSERT INTO images(id, path, name, sha256, width, height, bytes, split, source, "
            "cache_row, added_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            ((i, f"pools/synthetic/{i:07d}.jpg", f"{i:07d}.jpg", f"{i:064x}", 96, 64, 4000,
              str(splits[i - 1]), "synthetic", i - 1, t) for i in range(1, n + 1)))
        conn.executemany(
            "INSERT INTO ground_truth(image_id, attribute, value) VALUES (?,?,?)",
            ((i, a, classes[a][truth_idx[a][i - 1]]) for i in range(1, n + 1) for a in attrs))
        # Models: one per round of training; the last one is current and predicted the pool.
        model_ids = []
        for m in range(MODELS):
            metrics = {"test": {a: {"accuracy": 0.5 + 0.05 * m} for a in attrs},
                       "train": {"n": 500 + 700 * m}}
            cur = conn.execute(
                "INSERT INTO models(path, status, is_current, params, metrics, created_at) "
                "VALUES (?,?,?,?,?,?)", (f"models/{m}/model.pt", "ready", int(m == MODELS - 1),
                                         "{}", json.dumps(metrics), t))
            model_ids.append(int(cur.lastrowid))
        current = model_ids[-1]
        probs = rng.uniform(0.3, 1.0, (n, len(attrs)))
        conn.executemany(
            "INSERT INTO predictions(model_id, image_id, attribute, value, prob) VALUES (?,?,?,?,?)",
            ((current, i, a, classes[a][truth_idx[a][i - 1]], float(probs[i - 1, k]))
             for i in range(1, n + 1) for k, a in enumerate(attrs)))
        conn.executemany(
            "INSERT INTO scores(model_id, image_id, name, value) VALUES (?,?,?,?)",
            ((current, i, f"entropy:{a}", float(1.0 - probs[i - 1, k]))
             for i in range(1, n + 1) for k, a in enumerate(attrs)))
    # Rounds: a random seed round, then ranked rounds; labels for the first LABELLED queued.
    order = rng.permutation(np.arange(1, n + 1))
    sizes = [SEED_ROUND] + [ROUND_SIZE] * ROUNDS
    queued: list[int] = []
    start = 0
    for r, size in enumerate(sizes):
        ids = [int(x) for x in order[start:start + size]]
        start += size
        store.create_round(ids, kind="seed" if r == 0 else "al",
                           strategy="random" if r == 0 else "entropy",
                           scores=None if r == 0 else sorted(rng.uniform(0, 1, size), reverse=True),
                           model_id=None if r == 0 else model_ids[min(r, MODELS) - 1])
        queued += ids
    with store.transaction():
        for k, image_id in enumerate(queued[:LABELLED]):
            for version in (1, 2) if k < RELABELLED else (1,):
                cur = conn.execute(
                    "INSERT INTO labels(image_id, version, source, annotator, created_at) "
                    "VALUES (?,?,?,?,?)", (image_id, version, "builtin", "bench", t))
                conn.executemany(
                    "INSERT INTO label_values(label_id, attribute, value) VALUES (?,?,?)",
                    [(cur.lastrowid, a, classes[a][truth_idx[a][image_id - 1]]) for a in attrs])
        for j in range(20):
            conn.execute("INSERT INTO jobs(kind, status, created_at, updated_at) "
                         "VALUES (?,?,?,?)", ("train" if j % 2 else "queue", "succeeded", t, t))
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as SQLite's auto-checkpoint leaves a live store
    store.close()
    return ws


def timed(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    """Wall-clock median/max, and the median CPU time of this process (less sensitive to a
    busy machine; on an idle one the two agree)."""
    fn()  # warm the page cache once, like a page that was already open
    runs, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        runs.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return {"median_ms": statistics.median(runs), "max_ms": max(runs),
            "cpu_median_ms": statistics.median(cpu)}


def measure(ws: Workspace, repeat: int) -> dict[str, dict[str, float]]:
    schema = ws.schema
    with ws.store() as s:
        batch = labeling.default_batch(s).number
        image_id = labeling.next_image_id(s, batch)
    candidates = candidate_ids(ws)
    out: dict[str, dict[str, float]] = {}

    def on_store(fn: Callable[[ProjectStore], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with ws.store() as s:
                return fn(s)
        return run

    def label_page(s: ProjectStore) -> None:
        s.count_images()
        infos = labeling.batches(s)
        labeling.default_batch(s, infos)
        s.round_items(batch)
        current = labeling.next_image_id(s, batch)
        labeling.task_for(s, current, batch)

    out["open"] = timed(on_store(lambda s: None), repeat)
    out["count_images"] = timed(on_store(lambda s: s.count_images()), repeat)
    out["batches"] = timed(on_store(labeling.batches), repeat)
    out["default_batch"] = timed(on_store(labeling.default_batch), repeat)
    out["round_items"] = timed(on_store(lambda s: s.round_items(batch)), repeat)
    out["next_image_id"] = timed(on_store(lambda s: labeling.next_image_id(s, batch)), repeat)
    out["task_for"] = timed(on_store(lambda s: labeling.task_for(s, image_id, batch)), repeat)
    out["label_page"] = timed(on_store(label_page), repeat)
    out["save_label"] = timed(on_store(lambda s: labeling.save_label(
        s, schema, image_id, {"color": schema.classes["color"][0]}, annotator="bench")), repeat)
    out["status"] = timed(on_store(lambda s: s.status_counts()), repeat)
    out["learning_curve"] = timed(on_store(learning_curve), repeat)

    rng = np.random.default_rng(1)
    scores = rng.uniform(0, 1, len(candidates))
    state = {"free": np.ones(len(candidates), dtype=bool)}  # not yet used by a timed round

    def record() -> None:  # one 200-image round from not yet queued candidates, as build_queue does
        rows = np.flatnonzero(state["free"])[:ROUND_SIZE]
        state["free"][rows] = False
        _record(ws, candidates, rows, lambda r: r[:ROUND_SIZE], kind="al",
                strategy="entropy", scores=scores, params={"bench": True}, model_id=None)

    out["queue_record"] = timed(record, repeat)
    out["candidates"] = timed(lambda: candidate_ids(ws), max(1, min(repeat, 3)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "store_scale.json")
    ap.add_argument("--dir", type=Path, default=None, help="where to build the stores (default: a temp dir)")
    args = ap.parse_args()
    results: dict[str, Any] = {"machine": platform.processor() or platform.machine(),
                               "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
                               "repeat": args.repeat, "sizes": {}}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for n in args.sizes:
            t0 = time.perf_counter()
            ws = build(Path(tmp) / f"ws{n}", n)
            built = time.perf_counter() - t0
            size_mb = ws.db_path.stat().st_size / 1e6
            print(f"built {n:,} images in {built:.1f} s ({size_mb:.0f} MB)", flush=True)
            figures = measure(ws, args.repeat)
            results["sizes"][str(n)] = {"build_s": built, "db_mb": size_mb, "queries": figures}
            for name, f in figures.items():
                flag = "" if name not in INTERACTIVE or f["median_ms"] <= GOAL_MS else "  > goal"
                print(f"  {name:15s} median {f['median_ms']:8.2f} ms  max {f['max_ms']:8.2f} ms  "
                      f"cpu {f['cpu_median_ms']:8.2f} ms{flag}")
    names = list(next(iter(results["sizes"].values()))["queries"])
    header = "| query (median ms, wall / cpu) | " + " | ".join(
        f"{int(n):,} images" for n in results["sizes"]) + " |"
    print("\n" + header + "\n|---|" + "---:|" * len(results["sizes"]))
    for name in names:
        cells = [f"{v['queries'][name]['median_ms']:.1f} / {v['queries'][name]['cpu_median_ms']:.1f}"
                 for v in results["sizes"].values()]
        print(f"| {name}{'' if name in INTERACTIVE else ' (job)'} | " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}; load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
