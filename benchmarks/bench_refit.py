"""Head refit + re-rank time: the fast half of the two-speed loop, once embeddings exist.

What is timed is what the ``refit`` job does after a saved batch (``core.refit.refit_and_rerank``):
read labels, splits and open batches from the store, fit one logistic-regression head per
attribute on the labelled train images, predict every unlabelled non-test image, re-rank the open
batch's remainder in the store, save the pool scores. Loading the cached embeddings from disk
(one ``np.load`` of an N x D float32 file) is timed separately and added.

Setup (not timed): a workspace whose store holds N images (70/10/20 train/val/test), ``--labels``
of them labelled with random classes of the default schema (random labels make the solver work
at least as hard as real ones), an open batch of ``--batch`` images, and synthetic embeddings
(N x D, ReLU'd Gaussians with class-dependent means, like pooled CNN features). No images or
backbone are needed: the goal "re-rank <= 2 s for an 11.5k pool on 2 cores" is about this step.
Mirror views are on, as in the app (the heads fit twice the rows and predict both views; the
mirrored embeddings are a second N x D file, loaded and timed the same way); ``--no-mirror``
times the plain refit.

Usage: nice .venv/bin/python benchmarks/bench_refit.py [--n 11500] [--dim 1280] [--labels 1000]
       [--batch 200] [--repeats 3] [--threads 2] [--no-mirror]
Smoke: .venv/bin/python benchmarks/bench_refit.py --n 600 --dim 64 --labels 100 --batch 50 --repeats 1
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=11500, help="pool size (default 11500)")
    p.add_argument("--dim", type=int, default=1280, help="embedding width (Lite0: 1280, ResNet18: 512)")
    p.add_argument("--labels", type=int, default=1000, help="labelled train images")
    p.add_argument("--batch", type=int, default=200, help="open batch to re-rank")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP threads")
    p.add_argument("--balanced", action="store_true", help="class_weight=balanced")
    p.add_argument("--no-mirror", action="store_true", help="plain views only")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before numpy is imported

    import numpy as np

    from core.embeddings import PoolEmbeddings
    from core.refit import refit_and_rerank
    from data.workspace import Workspace, WorkspaceConfig
    from models.backbones import WeightsOrigin

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "ws").init(WorkspaceConfig(cache_size=32))
        schema = ws.schema
        splits = rng.choice(["train", "val", "test"], size=args.n, p=[0.7, 0.1, 0.2])
        with ws.store() as store, store.transaction():
            ids = [store.add_image(path=f"pool/{i}.jpg", name=f"{i}.jpg", sha256=f"{i:064x}",
                                   width=32, height=32, nbytes=1, split=str(splits[i]),
                                   cache_row=i)[0] for i in range(args.n)]
        train = [i for i, s in zip(ids, splits) if s == "train"]
        labelled = rng.choice(train, size=min(args.labels, len(train)), replace=False).tolist()
        truth = {i: {a: str(rng.choice(schema.classes[a])) for a in schema.attributes} for i in ids}
        with ws.store() as store, store.transaction():
            for i in labelled:
                store.add_label(int(i), truth[i], source="import")
        rest = [i for i in ids if i not in set(labelled) and splits[ids.index(i)] != "test"]
        with ws.store() as store:
            store.create_round(rest[:args.batch], kind="al", strategy="entropy")
        # class-dependent means on the first attribute so the heads have something to find
        centres = rng.normal(0, 1, (len(schema.classes[schema.attributes[0]]), args.dim))
        first = schema.attributes[0]
        vec = np.maximum(rng.normal(0, 1, (args.n, args.dim)) + 0.5 * centres[
            [schema.classes[first].index(truth[i][first]) for i in ids]], 0).astype(np.float32)
        npy = Path(tmp) / "emb.npy"
        np.save(npy, vec)
        mirror_npy = Path(tmp) / "emb_mirror.npy"   # a mirror view: the same images, perturbed
        np.save(mirror_npy, np.maximum(vec + rng.normal(0, 0.3, vec.shape), 0).astype(np.float32))
        del vec
        emb_ids = np.array(ids, np.int64)

        runs = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            vectors = np.load(npy)
            origin = WeightsOrigin("synthetic", "imagenet", "synthetic")
            mirrored = None if args.no_mirror else PoolEmbeddings(
                emb_ids, np.load(mirror_npy), "synthetic", origin, mirrored=True)
            t_load = time.perf_counter() - t0
            emb = PoolEmbeddings(emb_ids, vectors, "synthetic", origin)
            rec = refit_and_rerank(ws, embeddings=emb, mirrored=mirrored,
                                   mirror=not args.no_mirror,
                                   class_weight="balanced" if args.balanced else None)
            assert rec.mirror == (not args.no_mirror)
            t = rec.timings
            runs.append({"load_embeddings_s": t_load, **t,
                         "end_to_end_s": t_load + t["total_s"], "reranked": sum(rec.reranked.values())})
            print(f"run {r + 1}: load {t_load:.2f} s + refit/re-rank {t['total_s']:.2f} s "
                  f"(fit {t['fit_s']:.2f}, predict {t['predict_s']:.2f}, re-rank {t['rerank_s']:.2f},"
                  f" save {t['save_s']:.2f}) = {t_load + t['total_s']:.2f} s; "
                  f"{runs[-1]['reranked']} re-ranked", flush=True)
    best = min(runs, key=lambda x: x["end_to_end_s"])
    median = sorted(x["end_to_end_s"] for x in runs)[len(runs) // 2]
    out = {"n": args.n, "dim": args.dim, "labels": args.labels, "batch": args.batch,
           "mirror": not args.no_mirror,
           "threads": args.threads, "balanced": args.balanced, "runs": runs,
           "median_end_to_end_s": median, "best_end_to_end_s": best["end_to_end_s"],
           "load_avg": os.getloadavg(), "cpus": os.cpu_count()}
    print(f"median {median:.2f} s, best {best['end_to_end_s']:.2f} s over {args.repeats} runs "
          f"(n={args.n}, dim={args.dim}, labels={args.labels}, threads={args.threads}); "
          f"load average {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
