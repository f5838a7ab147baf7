"""The few-labels benchmark harness on a tiny synthetic set (no real data, seconds)."""
from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")

COLOURS = {"red": (200, 30, 30), "blue": (30, 40, 200), "white": (235, 235, 235)}


def _bench():
    spec = importlib.util.spec_from_file_location("bench_few_labels",
                                                  REPO / "benchmarks" / "bench_few_labels.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_few_labels"] = mod
    spec.loader.exec_module(mod)
    return mod


def make_set(root: Path, name: str, n: int, sources: list[str], *,
             column: str | None = None, values: dict[str, list[str]] | None = None) -> Path:
    """``root/name/images/*.jpg`` + labels.csv; pixel colour = class for the colour set."""
    rng = np.random.default_rng(0)
    folder = root / name
    (folder / "images").mkdir(parents=True)
    column = column or name
    classes = list((values or {}).get(column, COLOURS))
    rows = []
    for i in range(n):
        cls = classes[(i // 3) % len(classes)]  # not in step with the 3-cycle of sources
        img = rng.integers(80, 120, (40, 40, 3)).astype(np.uint8)
        img[8:32, 8:32] = COLOURS.get(cls, (20 * (i % len(classes)), 90, 160))
        cv2.imwrite(str(folder / "images" / f"x{i:04d}.jpg"), img[:, :, ::-1])
        row = {"file": f"images/x{i:04d}.jpg", "color": "", "type": "", "orientation": "",
               "source": sources[i % len(sources)] if len(sources) > 1 and sources[0] == "train"
               else sources[(i * len(sources)) // n]}
        row[column] = cls
        rows.append(row)
    with open(folder / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "color", "type", "orientation", "source"])
        w.writeheader()
        w.writerows(rows)
    return folder


def test_split_uses_shipped_train_test_or_whole_groups(tmp_path: Path) -> None:
    bench = _bench()
    # colour-like: source is the shipped split (every 4th file is "test")
    make_set(tmp_path, "color", 40, ["train", "train", "train", "test"])
    data = bench.load_set(tmp_path, "color")
    sources = [g.rsplit("#", 1)[0] for g in data.groups]
    assert {sources[i] for i in data.test} == {"test"}
    assert {sources[i] for i in data.pool} == {"train"}
    # orientation-like: two video sources, 200 frames each: blocks of 50 never straddle
    make_set(tmp_path, "orientation", 400, ["camA", "camB"], values={
        "orientation": ["front", "back"]})
    data = bench.load_set(tmp_path, "orientation", test_fraction=0.3)
    test_groups = {data.groups[i] for i in data.test}
    pool_groups = {data.groups[i] for i in data.pool}
    assert test_groups and pool_groups and not (test_groups & pool_groups)
    # a subset keeps each image on its side
    small = bench.load_set(tmp_path, "orientation", test_fraction=0.3, max_images=100)
    assert len(small.paths) == 100
    assert {small.groups[i] for i in small.test} <= test_groups


def test_tiny_harness_run_writes_tables_and_refuses_a_busy_machine(tmp_path: Path,
                                                                   monkeypatch) -> None:
    bench = _bench()
    make_set(tmp_path, "color", 90, ["train", "train", "test"])
    args = ["--data", str(tmp_path), "--sets", "color", "--budgets", "6,12,24",
            "--seeds", "2", "--max-batch", "6", "--image-size", "32",
            "--backbones", "resnet18-random", "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "out" / "few"), "--reference-budget", "24",
            "--ablation-budget", "12", "--threads", "1",
            "--strategies", "random,entropy,entropy+kcenter,typiclust",
            "--semi-strategies", "random"]
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    assert bench.main(args) == 3                      # busy: refused without --force
    assert not (tmp_path / "out" / "few.csv").exists()
    assert bench.main(args + ["--force"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "few.csv")))
    keys = {(r["strategy"], r["semi"], r["seed"], r["budget"]) for r in rows}
    assert ("random", "labelspread", "1", "24") in keys
    assert ("entropy+kcenter", "none", "0", "6") in keys
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    md = (tmp_path / "out" / "few.md").read_text()
    assert "Labels to reach A (color)" in md and "Ablation at 12 labels" in md
    # core.typicality provides typiclust now: the harness runs it (no "missing" note)
    assert ("typiclust", "none", "0", "6") in keys and ("typiclust", "none", "1", "24") in keys
    assert "no typiclust()" not in md
    assert list((tmp_path / "cache").glob("color_resnet18-random_32px_*.npy"))


def test_strategy_found_at_run_time_is_used(tmp_path: Path, monkeypatch) -> None:
    """The harness looks typiclust()/probcover() up at run time (core.typicality first) and runs
    what it finds there (no harness change when the product's function changes)."""
    import core.typicality

    bench = _bench()
    calls = []

    def typiclust(embeddings, k, *, existing=None, seed=0):
        calls.append((len(embeddings), k, None if existing is None else len(existing)))
        return np.arange(k)

    monkeypatch.setattr(core.typicality, "typiclust", typiclust)
    selectors, missing = bench.build_selectors(["typiclust", "probcover"])
    assert {"typiclust", "probcover"} <= set(selectors)
    assert "typiclust" not in missing and "probcover" not in missing
    make_set(tmp_path, "color", 60, ["train", "train", "test"])
    data = bench.load_set(tmp_path, "color")
    x = np.random.default_rng(0).normal(size=(len(data.paths), 8)).astype(np.float32)
    traj = bench.simulate(data, x, selectors["typiclust"], strategy="typiclust", seed=0,
                          budgets=[4, 10], max_batch=4, semi=False, spread_threshold=0.9,
                          base={"set": "color", "backbone": "b", "origin": "o"})
    assert [r["budget"] for r in traj.rows] == [4, 10]
    assert calls[0] == (len(data.pool), 4, None) and calls[1][2] == 4
    assert len(set(traj.order)) == 10


def test_finetune_goes_through_models_train(tmp_path: Path) -> None:
    bench = _bench()
    make_set(tmp_path, "color", 45, ["train", "train", "test"])
    data = bench.load_set(tmp_path, "color")
    pixels = bench.load_pixels(data, 32)
    res = bench.finetune(data, pixels, list(range(20)), spec="resnet18-random", seed=0,
                         epochs=1, size=32, threads=1, semi="none", workdir=tmp_path / "ft")
    assert 0.0 <= res["accuracy"] <= 1.0
    assert res["train_images"] + res["val_images"] == 20 and res["val_images"] == 2
    assert "random" in res["origin"]


def test_quick_mode_finetunes_with_and_without_fixmatch(tmp_path: Path, monkeypatch) -> None:
    """--quick --semi fixmatch: one set, one seed, one pretrained backbone, two budgets, each
    fine-tuned with and without FixMatch (on a capped unlabelled pool)."""
    bench = _bench()
    make_set(tmp_path, "color", 60, ["train", "train", "test"])
    make_set(tmp_path, "type", 60, ["a", "b", "c"], values={"type": ["sedan", "suv"]})
    monkeypatch.setattr(bench, "embeddings", lambda spec, data, *a, **k: (
        np.random.default_rng(0).normal(size=(len(data.paths), 8)).astype(np.float32), "o"))
    monkeypatch.setattr(bench, "load_pixels", lambda data, size: np.zeros((1,)))
    calls = []

    def finetune(data, pixels, picks, *, spec, seed, epochs, semi, semi_max_images, **kw):
        calls.append((data.name, spec, seed, len(picks), semi, epochs, semi_max_images))
        return {"accuracy": 0.5, "origin": "o", "seconds": 0.0}
    monkeypatch.setattr(bench, "finetune", finetune)
    args = bench.parse_args(["--quick", "--semi", "fixmatch", "--data", str(tmp_path),
                             "--budgets", "12,6,24", "--out", str(tmp_path / "q"),
                             "--cache-dir", str(tmp_path / "c"), "--force"])
    assert args.sets == ["color"] and args.seeds == 1 and args.strategies == ["random"]
    assert args.backbones == ["efficientnet_lite0-imagenet"] and args.budgets == [6, 12]
    assert bench.main(["--quick", "--semi", "fixmatch", "--data", str(tmp_path), "--sets", "type",
                       "--budgets", "6,12", "--backbones", "efficientnet_lite0-imagenet",
                       "--out", str(tmp_path / "q"), "--cache-dir", str(tmp_path / "c"),
                       "--force", "--threads", "1"]) == 0
    q = bench.QUICK_SEMI_IMAGES
    assert sorted(calls) == sorted(
        ("type", "efficientnet_lite0-imagenet", 0, b, s, bench.QUICK_EPOCHS, q)
        for b in (6, 12) for s in ("none", "fixmatch"))
    rows = list(csv.DictReader(open(tmp_path / "q.csv")))
    assert {(r["semi"], r["budget"]) for r in rows if r["mode"] == "finetune"} == {
        ("none", "6"), ("fixmatch", "6"), ("none", "12"), ("fixmatch", "12")}
    assert bench.parse_args(["--quick"]).out.name == "few_labels_quick"   # full results kept
    assert bench.parse_args(["--budgets", "5"]).finetune_epochs == 8       # defaults unchanged
    assert bench.parse_args([]).budgets == list(bench.DEFAULT_BUDGETS)
