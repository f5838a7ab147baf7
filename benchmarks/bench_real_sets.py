"""Per-head test accuracy from scratch on the real sets in ../shared/data/real.

    nice .venv/bin/python benchmarks/bench_real_sets.py [--sets color type orientation]
        [--epochs 25 --image-size 128 --max-train N --threads 2 --workdir DIR]

Each set labels one attribute, so training on it trains that head alone (the other heads are
masked out by the loss: exactly the partial-label case). Every set is ingested through the
normal pipeline (data.ingest) into its own workspace; the split comes from
``load_labels_csv``'s group keys, i.e. contiguous blocks of 50 files per ``source``, so the
GTI highway frames (near-duplicate video frames) never straddle train and test. ``--max-train``
labels only a seeded random subset of the train split (val and test stay complete), for a
reduced run on a loaded machine. No pretrained weights are reachable here: from scratch.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from data.workspace import Workspace, WorkspaceConfig  # noqa: E402

REAL = REPO.parent / "shared" / "data" / "real"
ATTRIBUTE = {"color": "color", "type": "type", "orientation": "orientation"}


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def prepare(name: str, root: Path, image_size: int, max_train: int | None, seed: int) -> Workspace:
    """Ingest one real set into its own workspace (once) and label it from its CSV."""
    from data.ingest import ingest, load_labels_csv

    src = REAL / name
    ws = Workspace(root / f"{name}_{image_size}_{max_train or 'all'}")
    if not ws.exists:
        ws.init(WorkspaceConfig(cache_size=image_size, seed=seed))
        truth, groups = load_labels_csv(src / "labels.csv", ws.schema)
        t = time.perf_counter()
        report = ingest(ws, src, ground_truth=truth, group_keys=groups,
                        exclude=[src / "labels.csv"])
        print(f"{name}: ingested {report.summary()} in {time.perf_counter() - t:.1f} s", flush=True)
    with ws.store() as store:
        if store.labelled_ids():
            return ws
        truth = store.ground_truth()
        rng = np.random.default_rng(seed)
        train_ids = [i.id for i in store.images(split="train") if i.id in truth]
        keep = set(train_ids)
        if max_train is not None and len(train_ids) > max_train:
            keep = set(int(i) for i in rng.choice(train_ids, max_train, replace=False))
        with store.transaction():
            for image in store.images():
                if image.id in truth and (image.split != "train" or image.id in keep):
                    store.add_label(image.id, truth[image.id], source="import")
    return ws


def run_set(name: str, args: argparse.Namespace, root: Path) -> dict:
    from core.training import train_and_promote
    from models.train import TrainConfig

    attr = ATTRIBUTE[name]
    ws = prepare(name, root, args.image_size, args.max_train, args.seed)
    with ws.store() as store:
        counts = store.status_counts()["labelled_by_split"]
        test_labels = [v[attr] for v in store.current_labels(split="test").values() if attr in v]
    majority = Counter(test_labels).most_common(1)[0][1] / len(test_labels)
    load_before = load_avg()
    outcome = train_and_promote(ws, TrainConfig(epochs=args.epochs, image_size=args.image_size,
                                                num_threads=args.threads, pretrained=False,
                                                seed=args.seed, patience=args.patience))
    res, report = outcome.train, outcome.evaluation.to_dict()
    head = report["heads"][attr]
    out = {"attribute": attr, "labelled_by_split": counts, "epochs": res.epochs_run,
           "best_epoch": res.best_epoch, "seconds": round(res.seconds, 1),
           "images_per_s": round(res.images_per_s, 1), "bf16": res.bf16,
           "test_accuracy": head["accuracy"], "test_macro_f1": head["macro_f1"],
           "test_n": head["n"], "majority_class_accuracy": majority,
           "per_class_recall": {c: round(v["recall"], 3) for c, v in head["per_class"].items()
                                if v["support"]},
           "load_before": load_before, "load_after": load_avg(), "origin": res.origin}
    print(f"{name}: {json.dumps(out)}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", nargs="+", default=list(ATTRIBUTE), choices=list(ATTRIBUTE))
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="keeps the ingested workspaces between runs")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not REAL.is_dir():
        print(f"skipped: real data not available at {REAL}")
        return
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_real_"))
    root.mkdir(parents=True, exist_ok=True)
    results = {"config": vars(args), "pretrained": "none (from scratch: no weights offline)",
               "sets": {}}
    for name in args.sets:
        results["sets"][name] = run_set(name, args, root)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
