"""Label efficiency of the acquisition strategies: test accuracy vs number of labels.

Protocol (the product's own code end to end: ingestion, simulated annotator, training with warm
start, evaluation, pool scoring, queue, round loop):

1. Build a pool once per dataset: the synthetic demo pool (``data/demo.py``, full ground truth)
   and/or the real sets in ``../shared/data/real`` (color/, type/, orientation/ mixed into one
   pool; each image labelled for one attribute only: partial labels). The split is fixed
   (80 % train, 0 % val, 20 % test); every test image is labelled from ground truth once and is
   the fixed evaluation set (test labels do not count as spent labels).
2. Per seed: the same random seed set of ``--seed-size`` train images for every strategy,
   labelled by the simulated annotator; one model trained from scratch on it (shared by all
   strategies of that seed).
3. Per strategy: ``--rounds`` times, queue ``--batch`` images with the strategy
   (``core.queue.build_queue``), label them (simulated annotator), retrain (warm start from the
   previous round's model, ``--warm-epochs``; or ``--from-scratch``), evaluate on the test split
   (``core.loop.run_round`` does label -> train -> evaluate -> score -> queue).
4. Learning curves (mean and std over seeds) of mean-over-heads and per-head test accuracy vs
   labels, saved as CSV + plotly HTML (PNG needs kaleido/matplotlib, not installed here), and a
   summary: labels each strategy needs to reach random's accuracy at the largest budget.

Strategies: names from ``core.acquisition.STRATEGIES``; ``NAME+kcenter``/``NAME+kmeans`` adds
the diversity step (a hybrid), ``NAME+balance`` the class-balance option.

Default run is small (a few minutes on a laptop; longer on a shared 2-core box):
``nice .venv/bin/python benchmarks/bench_al.py``; ``--full`` is the 11.5k-scale run.
No pretrained weights are available offline: every model here trains from random init.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

REAL = REPO.parent / "shared" / "data" / "real"
ATTRS = ("color", "type", "orientation")
DEFAULT_STRATEGIES = "random,entropy,margin,bald,entropy+kcenter"


@dataclass
class Config:
    dataset: str = "demo"              # "demo" or "real"
    pool: int = 2000                   # demo pool size / real images per set (cap)
    size: int = 48                     # cache and model input size (px)
    seed_size: int = 100
    batch: int = 100
    rounds: int = 3
    epochs: int = 10                   # seed model (from scratch)
    warm_epochs: int = 3               # each later round
    from_scratch: bool = False         # retrain from scratch each round (epochs) instead
    train_batch: int = 32
    mc_passes: int = 10
    threads: int = 1
    strategies: list[str] = field(default_factory=lambda: DEFAULT_STRATEGIES.split(","))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])


def parse_strategy(spec: str) -> tuple[str, str | None, bool]:
    """``entropy+kcenter+balance`` -> (strategy, diversity, balance)."""
    parts = spec.split("+")
    diversity = next((p for p in parts[1:] if p in ("kcenter", "kmeans")), None)
    balance = "balance" in parts[1:]
    unknown = [p for p in parts[1:] if p not in ("kcenter", "kmeans", "balance")]
    if unknown:
        raise SystemExit(f"unknown strategy option(s) {unknown} in {spec!r}")
    return parts[0], diversity, balance


def train_config(cfg: Config, seed: int, warm: bool) -> Any:
    from models.train import TrainConfig

    return TrainConfig(epochs=cfg.epochs, warm_epochs=cfg.warm_epochs, image_size=cfg.size,
                       batch_size=cfg.train_batch, seed=seed, num_threads=cfg.threads,
                       pretrained=False, warm_start=warm, device="cpu")


# -- pools -------------------------------------------------------------------------------------
def _new_workspace(root: Path, size: int) -> Any:
    from data.workspace import Workspace, WorkspaceConfig

    return Workspace(root).init(WorkspaceConfig(
        cache_size=size, split_fractions={"train": 0.8, "val": 0.0, "test": 0.2}))


def build_demo(root: Path, cfg: Config) -> Any:
    from data.demo import create_demo_pool

    ws = _new_workspace(root, cfg.size)
    create_demo_pool(ws, cfg.pool, seed=1234, size=max(cfg.size, 64))
    return ws


def build_real(root: Path, cfg: Config) -> Any:
    """color/, type/ and orientation/ mixed into one pool, up to ``cfg.pool`` images per set.

    A subset keeps whole source blocks in file order (the first N files), so near-duplicate
    video frames still share a split.
    """
    from data.ingest import ingest, load_labels_csv

    ws = _new_workspace(root, cfg.size)
    for sub in ("color", "type", "orientation"):
        folder = REAL / sub
        truth, groups = load_labels_csv(folder / "labels.csv", ws.schema)
        names = sorted(truth)
        if cfg.pool and len(names) > cfg.pool:
            # spread the cap over the file list (every k-th block of 50) so all sources appear
            blocks = [names[i:i + 50] for i in range(0, len(names), 50)]
            step = max(1, len(blocks) * 50 // cfg.pool)
            names = [n for b in blocks[::step] for n in b][:cfg.pool]
        stage = root.parent / f"stage-{sub}"
        (stage / "images").mkdir(parents=True, exist_ok=True)
        for n in names:
            dst = stage / n
            if not dst.exists():
                os.link(folder / n, dst)
        ingest(ws, stage, ground_truth={n: truth[n] for n in names},
               group_keys={n: groups[n] for n in names if n in groups})
    return ws


def label_test_split(ws: Any) -> int:
    from core.annotator import simulate_labels

    with ws.store() as store:
        ids = [r.id for r in store.images(split="test")]
        return simulate_labels(store, ws.schema, ids, seed=0)


def copy_workspace(src: Path, dst: Path) -> Any:
    """Copy the database, cache, models and exports (not the source images) of a workspace."""
    from data.workspace import Workspace

    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for name in ("project.db", "config.json"):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    for sub in ("cache", "models", "exports"):
        if (src / sub).exists():
            shutil.copytree(src / sub, dst / sub)
    for sub in ("pools", "jobs"):
        (dst / sub).mkdir(exist_ok=True)
    return Workspace(dst)


def accuracy(record_metrics: dict[str, Any]) -> dict[str, float | None]:
    acc = record_metrics.get("accuracy") or {}
    out = {a: acc.get(a) for a in ATTRS}
    vals = [v for v in out.values() if v is not None]
    out["mean"] = float(np.mean(vals)) if vals else None
    return out


# -- runs --------------------------------------------------------------------------------------
def seed_model(base: Path, work: Path, cfg: Config, seed: int) -> tuple[Path, dict[str, Any]]:
    """Copy the pool, label a random seed set, train the shared round-0 model, evaluate."""
    from core.annotator import simulate_labels
    from core.queue import candidate_ids
    from core.training import train_and_promote

    t = time.perf_counter()
    dst = work / f"seed{seed}"
    ws = copy_workspace(base, dst)
    cand = candidate_ids(ws)
    rng = np.random.default_rng(seed)
    chosen = [int(i) for i in rng.choice(cand, size=min(cfg.seed_size, len(cand)), replace=False)]
    with ws.store() as store:
        store.create_round(chosen, kind="seed", strategy="random", params={"seed": seed})
        simulate_labels(store, ws.schema, chosen, seed=seed)
    outcome = train_and_promote(ws, train_config(cfg, seed, warm=False))  # train, evaluate, promote
    point = {"round": 0, "labels": len(chosen), **accuracy(outcome.evaluation.summary()),
             "seconds": time.perf_counter() - t}
    return dst, point


def run_strategy(seed_dir: str, work: str, cfg_dict: dict[str, Any], seed: int,
                 spec: str) -> list[dict[str, Any]]:
    """All rounds of one strategy from a seeded workspace; returns one row per round."""
    import torch

    cfg = Config(**cfg_dict)
    torch.set_num_threads(cfg.threads)
    logging.getLogger().setLevel(logging.ERROR)
    from core.loop import run_round
    from core.queue import build_queue

    strategy, diversity, balance = parse_strategy(spec)
    run_dir = Path(work) / f"run-{spec}-s{seed}"
    ws = copy_workspace(Path(seed_dir), run_dir)
    rows = []
    score_kwargs = {"threads": cfg.threads, "mc_passes": cfg.mc_passes if strategy.startswith("bald") else 0,
                    "backend": "torch"}
    try:
        t = time.perf_counter()
        build_queue(ws, strategy, cfg.batch, diversity=diversity, balance=balance, seed=seed,
                    score_kwargs=score_kwargs)
        for r in range(1, cfg.rounds + 1):
            rep = run_round(ws, simulate=True, strategy=strategy, top_k=cfg.batch,
                            diversity=diversity, balance=balance, seed=seed + 1000 * r,
                            train_config=train_config(cfg, seed, warm=not cfg.from_scratch),
                            warm_start=not cfg.from_scratch, score_kwargs=score_kwargs,
                            force_promote=True)  # each round's model, as measured before the gate
            rec = rep.record
            rows.append({"round": r, "labels": rec["labels"]["train_labels"],
                         **accuracy(rec["metrics"]["test"]),
                         "seconds": time.perf_counter() - t})
            t = time.perf_counter()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return rows


# -- analysis ----------------------------------------------------------------------------------
def curves(rows: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, tuple[float, float]]]]:
    """{strategy: {labels: {metric: (mean, std over seeds)}}}."""
    out: dict[str, dict[int, dict[str, tuple[float, float]]]] = {}
    grouped: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        grouped.setdefault((r["strategy"], int(r["labels"])), []).append(r)
    for (s, n), rs in sorted(grouped.items()):
        out.setdefault(s, {})[n] = {
            m: (float(np.mean([x[m] for x in rs if x[m] is not None])),
                float(np.std([x[m] for x in rs if x[m] is not None])))
            for m in ("mean", *ATTRS) if any(x[m] is not None for x in rs)}
    return out


def labels_to_reach(curve: dict[int, dict[str, tuple[float, float]]], target: float,
                    metric: str = "mean") -> float | None:
    """Labels at which a mean curve first reaches ``target`` (linear interpolation), else None."""
    pts = sorted((n, v[metric][0]) for n, v in curve.items() if metric in v)
    prev = None
    for n, acc in pts:
        if acc >= target:
            if prev is None or prev[1] >= target:
                return float(n)
            (n0, a0) = prev
            return n0 + (target - a0) * (n - n0) / (acc - a0)
        prev = (n, acc)
    return None


def summary(rows: list[dict[str, Any]], metric: str = "mean") -> list[dict[str, Any]]:
    cur = curves(rows)
    if "random" not in cur:
        return []
    budget = max(cur["random"])
    target = cur["random"][budget][metric][0]
    out = []
    for s, curve in cur.items():
        need = labels_to_reach(curve, target, metric)
        final = curve.get(budget, {}).get(metric, (math.nan, math.nan))
        out.append({"strategy": s, "budget": budget, "random_acc_at_budget": target,
                    "acc_at_budget": final[0], "std_at_budget": final[1],
                    "labels_to_reach_random": need,
                    "efficiency_vs_random": (budget / need) if need else None})
    return out


def write_outputs(out: Path, name: str, rows: list[dict[str, Any]], cfg: Config,
                  meta: dict[str, Any]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["dataset", "strategy", "seed", "round", "labels",
                                           "mean", *ATTRS, "seconds"])
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in w.fieldnames})
    cur = curves(rows)
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metrics = ["mean", *[a for a in ATTRS if any(a in v for c in cur.values() for v in c.values())]]
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[
        "mean over heads" if m == "mean" else m for m in metrics])
    palette = ["#444", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    for k, (s, curve) in enumerate(cur.items()):
        xs = sorted(curve)
        for j, m in enumerate(metrics):
            pts = [(x, curve[x][m]) for x in xs if m in curve[x]]
            fig.add_trace(go.Scatter(
                x=[p[0] for p in pts], y=[p[1][0] for p in pts], name=s, legendgroup=s,
                showlegend=j == 0, line={"color": palette[k % len(palette)],
                                         "dash": "dash" if s == "random" else "solid"},
                error_y={"type": "data", "array": [p[1][1] for p in pts], "visible": True}),
                row=1, col=j + 1)
    fig.update_xaxes(title_text="labelled images")
    fig.update_yaxes(title_text="test accuracy", col=1)
    fig.update_layout(title=f"Label efficiency, {name} ({len(cfg.seeds)} seeds; {meta['note']})",
                      height=420, width=380 * len(metrics))
    fig.write_html(out / f"{name}.html", include_plotlyjs="cdn")
    try:  # a PNG only where an image engine is installed (kaleido is not on the build boxes)
        fig.write_image(out / f"{name}.png")
    except Exception:
        pass
    summ = summary(rows)
    lines = [f"### {name}", "", f"config: {json.dumps(asdict(cfg))}", "",
             f"machine: {meta['machine']}", "",
             "| strategy | " + " | ".join(f"acc@{n}" for n in sorted(cur.get('random', {}))) +
             " | labels to reach random@max | efficiency |",
             "|---|" + "---|" * (len(cur.get("random", {})) + 2)]
    for s in summ:
        curve = cur[s["strategy"]]
        accs = " | ".join(f"{curve[n]['mean'][0]:.3f}±{curve[n]['mean'][1]:.3f}" if n in curve else "-"
                          for n in sorted(cur["random"]))
        need = s["labels_to_reach_random"]
        eff = s["efficiency_vs_random"]
        lines.append(f"| {s['strategy']} | {accs} | "
                     f"{'not reached' if need is None else f'{need:.0f}'} | "
                     f"{'-' if eff is None else f'{eff:.2f}x'} |")
    per_head = []
    for a in ATTRS:
        sa = summary(rows, a) if all(a in v for v in cur.get("random", {}).values()) else []
        if sa:
            per_head.append(f"{a}: " + ", ".join(
                f"{x['strategy']} {x['acc_at_budget']:.3f}" for x in sa))
    lines += ["", "per-head test accuracy at the largest budget: " + "; ".join(per_head), ""]
    text = "\n".join(lines)
    (out / f"{name}.md").write_text(text + "\n")
    (out / f"{name}.json").write_text(json.dumps({"config": asdict(cfg), "meta": meta,
                                                  "summary": summ, "rows": rows}, indent=2))
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("demo", "real", "both"), default="demo")
    ap.add_argument("--full", action="store_true",
                    help="the full run: 11.5k demo pool / all real images, 96 px, 3 seeds, "
                         "seed 500, batches of 500 x 6 rounds, 25/8 epochs")
    ap.add_argument("--pool", type=int, default=None, help="demo pool size / real images per set")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--seed-size", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--warm-epochs", type=int, default=None)
    ap.add_argument("--from-scratch", action="store_true")
    ap.add_argument("--strategies", default=DEFAULT_STRATEGIES)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--jobs", type=int, default=1, help="strategy runs in parallel processes")
    ap.add_argument("--workdir", default=None, help="keep pools here (reused when present)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--prepare-only", action="store_true", help="build the pools and stop")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    logging.basicConfig(level=logging.ERROR)
    import torch

    torch.set_num_threads(args.threads)
    datasets = ["demo", "real"] if args.dataset == "both" else [args.dataset]
    if "real" in datasets and not REAL.is_dir():
        print(f"skipping the real sets: {REAL} not found")
        datasets.remove("real")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_al_"))
    for ds in datasets:
        if args.full:
            cfg = Config(dataset=ds, pool=11500 if ds == "demo" else 0, size=96, seed_size=500,
                         batch=500, rounds=6, epochs=25, warm_epochs=8)
        else:
            cfg = Config(dataset=ds, pool=2000 if ds == "demo" else 1000)
        for key in ("pool", "size", "seed_size", "batch", "rounds", "epochs", "warm_epochs"):
            if getattr(args, key) is not None:
                setattr(cfg, key, getattr(args, key))
        cfg.from_scratch = args.from_scratch
        cfg.threads = args.threads
        cfg.strategies = [s for s in args.strategies.split(",") if s]
        cfg.seeds = [int(s) for s in args.seeds.split(",") if s]
        for spec in cfg.strategies:
            parse_strategy(spec)
        name = f"al_{ds}{'_full' if args.full else ''}"
        base = work / f"{name}-pool-{cfg.pool}-{cfg.size}"
        t0 = time.perf_counter()
        if not (base / "project.db").exists():
            (build_demo if ds == "demo" else build_real)(base, cfg)
            label_test_split(_ws(base))
        with _ws(base).store() as store:
            counts = store.status_counts()
        print(f"[{ds}] pool ready in {time.perf_counter() - t0:.0f} s: {counts['by_split']}, "
              f"test labelled {counts['labelled_by_split']['test']}", flush=True)
        if args.prepare_only:
            continue
        load_before = os.getloadavg()
        started = time.perf_counter()
        rows: list[dict[str, Any]] = []
        for seed in cfg.seeds:
            seed_dir, p0 = seed_model(base, work / name, cfg, seed)
            print(f"[{ds}] seed {seed}: seed model {p0['labels']} labels acc {p0['mean']:.3f} "
                  f"({p0['seconds']:.0f} s)", flush=True)
            for spec in cfg.strategies:
                rows.append({"dataset": ds, "strategy": spec, "seed": seed, **p0})
            with ProcessPoolExecutor(max_workers=args.jobs) if args.jobs > 1 else _Inline() as ex:
                futures = {spec: ex.submit(run_strategy, str(seed_dir), str(work / name),
                                           asdict(cfg), seed, spec) for spec in cfg.strategies}
                for spec, fut in futures.items():
                    for r in fut.result():
                        rows.append({"dataset": ds, "strategy": spec, "seed": seed, **r})
                    last = rows[-1]
                    print(f"[{ds}] seed {seed} {spec:<18} " + " ".join(
                        f"{r['labels']}:{r['mean']:.3f}" for r in rows
                        if r["strategy"] == spec and r["seed"] == seed), flush=True)
            shutil.rmtree(seed_dir, ignore_errors=True)
        elapsed = time.perf_counter() - started
        meta = {"machine": f"{os.cpu_count()} CPUs, load average before {load_before[0]:.2f}, "
                           f"after {os.getloadavg()[0]:.2f}; {elapsed / 60:.1f} min; "
                           f"torch threads {args.threads}, jobs {args.jobs}",
                "note": f"{cfg.size}px, random init, {'from scratch' if cfg.from_scratch else 'warm start'}",
                "minutes": elapsed / 60}
        text = write_outputs(Path(args.out), name, rows, cfg, meta)
        print(text, flush=True)


def _ws(root: Path) -> Any:
    from data.workspace import Workspace

    return Workspace(root)


class _Inline:
    """A stand-in executor that runs submissions in this process (for --jobs 1)."""

    def __enter__(self) -> "_Inline":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn: Any, *a: Any) -> Any:
        class _Done:
            def __init__(self, value: Any) -> None:
                self.value = value

            def result(self) -> Any:
                return self.value
        return _Done(fn(*a))


if __name__ == "__main__":
    main()
