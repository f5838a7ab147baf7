"""Training speed on this machine: throughput with/without the speed-ups, the default recipe on a
demo pool, and a warm-start round.

    nice .venv/bin/python benchmarks/bench_train.py throughput [--steps 6 --threads 2]
    nice .venv/bin/python benchmarks/bench_train.py recipe [--labels 1000 --extra 200 --pool 3000]

``throughput`` times training steps at 128 px, batch 64 (same process, same run) for:
the network alone in float32 contiguous / channels-last / bf16 / both, the input pipeline from
JPEG files (decode + resize + augment) versus from the uint8 cache (augment only), and the two
end to end (baseline = JPEG + float32 contiguous; ours = cache + channels-last + bf16).

``recipe`` builds a demo pool, labels a seeded random 1,000 images (simulated annotator),
runs the default 25-epoch recipe (from scratch: no pretrained weights offline), evaluates on the
test split, then labels 200 more train/val images and runs a warm-start round (default warm
epochs), reporting wall time and per-head test accuracy of both. Every model figure here is
from scratch.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.annotator import simulate_labels  # noqa: E402
from data.demo import create_demo_pool  # noqa: E402
from core.rounds import sample_first_batch  # noqa: E402
from data.schema import DEFAULT_SCHEMA  # noqa: E402
from data.workspace import Workspace, WorkspaceConfig  # noqa: E402
from data.preprocess import resize_square  # noqa: E402
from data.transforms import apply_albumentations, train_transform  # noqa: E402
from models.network import MultiHeadResNet  # noqa: E402
from core.training import train_and_promote  # noqa: E402
from models.train import TrainConfig, bf16_supported, train_one_epoch  # noqa: E402


def load_avg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "bf16_native": bf16_supported(torch.device("cpu"))}


# -- throughput ----------------------------------------------------------------------------------

def _images(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random 'photos' (JPEG-compressible like real crops, unlike white noise)."""
    small = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return np.stack([cv2.resize(s, (size, size), interpolation=cv2.INTER_CUBIC) for s in small])


def _jpeg_files(images: np.ndarray, folder: Path, src_size: int) -> list[Path]:
    paths = []
    for k, img in enumerate(images):
        big = cv2.resize(img, (src_size, src_size), interpolation=cv2.INTER_CUBIC)
        p = folder / f"{k}.jpg"
        cv2.imwrite(str(p), cv2.cvtColor(big, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(p)
    return paths


def _batches_from_jpeg(paths: list[Path], size: int, aug, batch: int, rng):
    while True:
        idx = rng.choice(len(paths), batch, replace=False)
        out = []
        for i in idx:
            img = cv2.cvtColor(cv2.imread(str(paths[i])), cv2.COLOR_BGR2RGB)
            out.append(aug(resize_square(img, size)).transpose(2, 0, 1))
        yield torch.from_numpy(np.ascontiguousarray(np.stack(out), dtype=np.float32))


def _batches_from_cache(cache: np.ndarray, aug, batch: int, rng):
    while True:
        idx = rng.choice(len(cache), batch, replace=False)
        out = [aug(cache[i]).transpose(2, 0, 1) for i in idx]
        yield torch.from_numpy(np.ascontiguousarray(np.stack(out), dtype=np.float32))


def _random_batches(size: int, batch: int):
    x = torch.randn(batch, 3, size, size)
    while True:
        yield x


def _time_steps(batches, *, channels_last: bool, bf16: bool, steps: int, warmup: int,
                batch: int, size: int) -> float:
    """Images per second over ``steps`` optimizer steps after ``warmup`` untimed ones.

    The steps are the project's own :func:`models.train.train_one_epoch` (the batches are drawn
    lazily inside it, so input-pipeline cost is timed too).
    """
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = MultiHeadResNet(DEFAULT_SCHEMA).to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-4)
    y = torch.stack([torch.randint(0, DEFAULT_SCHEMA.num_classes(a), (batch,))
                     for a in DEFAULT_SCHEMA.attributes], dim=1)
    cpu = torch.device("cpu")

    def run(n: int):
        return train_one_epoch(model, ((next(batches), y) for _ in range(n)), opt,
                               DEFAULT_SCHEMA.attributes, cpu, use_bf16=bf16,
                               channels_last=channels_last)
    run(warmup)
    stats = run(steps)
    return stats.images / stats.seconds


def _time_pipeline(batches, n_batches: int, batch: int) -> float:
    next(batches)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(batches)
    return n_batches * batch / (time.perf_counter() - t0)


def throughput(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    size, batch = args.image_size, args.batch_size
    rng = np.random.default_rng(0)
    images = _images(512, size, rng)
    aug = apply_albumentations(train_transform(size, seed=0))
    result: dict = {"image_size": size, "batch_size": batch, "steps": args.steps,
                    "threads": args.threads, "load_before": load_avg(), "machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        paths = _jpeg_files(images, Path(tmp), args.jpeg_size)
        result["pipeline_img_per_s"] = {
            "jpeg_decode_resize_augment": _time_pipeline(
                _batches_from_jpeg(paths, size, aug, batch, rng), 6, batch),
            "cache_augment": _time_pipeline(_batches_from_cache(images, aug, batch, rng), 6, batch),
        }
        print("input pipeline img/s:", json.dumps(result["pipeline_img_per_s"]), flush=True)
        net = {}
        for name, cl, bf in (("fp32_contiguous", False, False), ("fp32_channels_last", True, False),
                             ("bf16_contiguous", False, True), ("bf16_channels_last", True, True)):
            if bf and not bf16_supported(torch.device("cpu")):
                continue
            net[name] = _time_steps(_random_batches(size, batch), channels_last=cl, bf16=bf,
                                    steps=args.steps, warmup=2, batch=batch, size=size)
            print(f"network only {name}: {net[name]:.1f} img/s", flush=True)
        result["network_img_per_s"] = net
        use_bf16 = bf16_supported(torch.device("cpu"))
        result["end_to_end_img_per_s"] = {
            "baseline_jpeg_fp32_contiguous": _time_steps(
                _batches_from_jpeg(paths, size, aug, batch, rng), channels_last=False, bf16=False,
                steps=args.steps, warmup=2, batch=batch, size=size),
            "ours_cache_channels_last" + ("_bf16" if use_bf16 else ""): _time_steps(
                _batches_from_cache(images, aug, batch, rng), channels_last=True, bf16=use_bf16,
                steps=args.steps, warmup=2, batch=batch, size=size),
        }
        print("end to end img/s:", json.dumps(result["end_to_end_img_per_s"]), flush=True)
    result["load_after"] = load_avg()
    return result


# -- recipe ------------------------------------------------------------------------------------

def recipe(args: argparse.Namespace) -> dict:
    root = Path(args.workspace or tempfile.mkdtemp(prefix="bench_train_"))
    ws = Workspace(root).init(WorkspaceConfig(cache_size=args.image_size))
    out: dict = {"workspace": str(root), "machine": machine(), "threads": args.threads,
                 "pretrained": "none (from scratch: no weights offline)"}
    t = time.perf_counter()
    create_demo_pool(ws, args.pool, seed=args.seed, size=args.image_size)
    out["pool_seconds"] = time.perf_counter() - t
    with ws.store() as store:
        _, ids = sample_first_batch(store, args.labels, seed=args.seed)
        simulate_labels(store, ws.schema, ids)
        out["labelled_by_split"] = store.status_counts()["labelled_by_split"]
    print("labelled:", out["labelled_by_split"], flush=True)

    def run(config: TrainConfig) -> dict:
        load_before = load_avg()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        outcome = train_and_promote(ws, config)  # train, test evaluation, promotion
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        res, report = outcome.train, outcome.evaluation.to_dict()
        return {"seconds": res.seconds, "cpu_seconds": cpu_s, "epochs": res.epochs_run, "best_epoch": res.best_epoch,
                "train_images": res.train_images, "val_images": res.val_images,
                "images_per_s": res.images_per_s, "bf16": res.bf16, "origin": res.origin,
                "val_acc": res.val_acc,
                "test_acc": {a: h["accuracy"] for a, h in report["heads"].items()},
                "test_macro_f1": {a: h["macro_f1"] for a, h in report["heads"].items()},
                "test_n": {a: h["n"] for a, h in report["heads"].items()},
                "load_before": load_before, "load_after": load_avg()}

    base = dict(epochs=args.epochs, image_size=args.image_size, num_threads=args.threads,
                pretrained=False, seed=args.seed)
    out["scratch"] = run(TrainConfig(**base))
    print("scratch:", json.dumps(out["scratch"]), flush=True)

    with ws.store() as store:
        unlabelled = [i.id for i in store.images() if i.split != "test"
                      and i.id not in store.labelled_ids()]
        rng = np.random.default_rng(args.seed + 1)
        extra = [int(i) for i in rng.choice(unlabelled, min(args.extra, len(unlabelled)),
                                            replace=False)]
        store.create_round(extra, kind="benchmark", strategy="random")
        simulate_labels(store, ws.schema, extra)
    out["warm"] = run(TrainConfig(**base, warm_start=True, warm_epochs=args.warm_epochs))
    print("warm start:", json.dumps(out["warm"]), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("throughput", "recipe"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--jpeg-size", type=int, default=192, help="side of the JPEG files decoded")
    p.add_argument("--pool", type=int, default=3000)
    p.add_argument("--labels", type=int, default=1000)
    p.add_argument("--extra", type=int, default=200)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--warm-epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workspace", default=None)
    p.add_argument("--json", default=None, help="also write the result to this file")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = throughput(args) if args.what == "throughput" else recipe(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
