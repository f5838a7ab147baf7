"""Learning from few labels: how many labels each pipeline needs to reach the reference A.

Issue 10, section 5. Per real set (``../shared/data/real/{color,type,orientation}``, one
attribute labelled per set), at 128 px, over >= 3 seeds (mean +- sample std):

1. **Split** each set once (``--split-seed``) into a pool and a fixed test split, never per
   file at random: the colour set ships its own split (``source`` = train/test); the others
   go by *group*: ``data.ingest.load_labels_csv`` puts every ``source`` into contiguous blocks
   of 50 files and ``data.splits.assign_split`` maps each block to a side, so GTI
   near-duplicate video frames never straddle pool and test. The test split is only ever used
   to report accuracy (no hyper-parameter is tuned; the head's C=1 is fixed).
2. **Embeddings** of every image, once per (backbone, set), cached as ``.npy`` under
   ``benchmarks/results/cache/`` (gitignored) via ``models.backbones`` + ``models.embed``.
   Backbones: ``resnet18-random`` (random init, what runs offline today),
   ``resnet18-imagenet`` (only if torchvision's weights load here) and
   ``efficientnet_lite0-imagenet`` (only if ``models.backbones`` offers it); the others are
   skipped with a message.
3. **Head-only active-learning simulation** on the cached embeddings: per (strategy, seed) the
   loop starts from nothing, and in rounds of at most ``--max-batch`` images it fits the head
   (``LogisticRegression``, fixed C=1, no tuning, on embeddings standardised with the pool's
   statistics) on the labelled rows, scores the pool with the
   strategy and labels a batch, recording test accuracy at each budget of ``--budgets``.
   Strategies come from ``core.acquisition``/``core.diversity`` at run time; those not there
   (yet) are skipped with "not available".
4. **Semi-supervised ablation** on embeddings: at each budget, label spreading
   (``models.semi.spread_labels``) over labelled + pool embeddings; pool rows it labels with
   probability >= ``--spread-threshold`` join the head's training rows (never the test rows).
5. ``--finetune``: **full fine-tuning confirmations** through ``models.train.train`` (the
   product's loop, not a copy): the reference A = 1,000 random labels from the pretrained
   backbone, and the best head-only pipeline at its claimed budget (labels it picked), each
   per seed, few epochs, val carved from the labelled budget (10 %), tested on the same split.
   ``--finetune-semi`` (or ``--semi fixmatch``) adds the claimed point with
   ``semi_supervised="fixmatch"``.
5b. ``--mirror``: every strategy again with the product's mirror-aware head refit
   (:func:`models.heads.fit_heads` with the images' left-right mirror views, orientation classes
   swapped through the schema's flip map, prediction averaged over both views); reported as
   backbone ``<spec>+mirror`` and judged against the plain backbone's A.
   ``--finetune-points random@500,random@1000`` fine-tunes exactly those points, and
   ``--merge-rows earlier.csv`` brings an earlier run's fine-tuned rows (A) into this one's
   tables, so the head-only sweep need not fine-tune again.
6. ``--quick``: what FixMatch adds, affordably (meant to finish in < 20 min on 2 cores; not yet
   timed at full size): one set (the first of ``--sets``), one seed, one pretrained backbone
   (the first non-random of ``--backbones``; default Lite0), two budgets (``QUICK_BUDGETS``
   unless ``--budgets`` is given), random selection, fine-tuned ``QUICK_EPOCHS`` epochs with
   and without ``--semi fixmatch`` at both budgets, FixMatch on at most ``QUICK_SEMI_IMAGES``
   unlabelled images. Example::

       nice .venv/bin/python benchmarks/bench_few_labels.py --quick --semi fixmatch --sets type

Which numbers are head-only and which are fine-tuned is said in every table. Outputs:
``<out>.csv`` (one row per run and budget), ``<out>.md`` (tables), ``<out>.json`` (summary).

Full measurement (alone on an idle machine; refuses to start at load > 0.5 unless --force)::

    nice .venv/bin/python benchmarks/bench_few_labels.py --sets color type orientation \
        --budgets 20,50,100,200,300,500,700,1000 --seeds 3 --finetune --finetune-semi

Smoke run (seconds)::

    .venv/bin/python benchmarks/bench_few_labels.py --sets color --budgets 20,50 --seeds 1 \
        --max-images 300 --out /tmp/few_labels_smoke --force

Strategies (issue 10 section 2) are looked up at run time, so the harness runs before and
after the selection work lands; a missing one is skipped with "not available":

- ``typiclust`` / ``probcover`` in ``core.typicality`` (or ``core.diversity``):
  ``fn(candidate embeddings, k, *, labelled=embeddings or None, seed=...)`` -> candidate
  indices; ProbCover's ``delta`` comes from ``choose_delta(pool embeddings, n_classes)``;
- ``entropy+stochastic`` / ``entropy+stochastic+kcenter``: ``core.queue.select`` (power
  sampling, optional core-set counting the labelled images) or ``stochastic_batch``;
- ``auto``: ``core.selection.choose_auto(n_labels, has_model, mean_entropy)`` decides per
  round; the harness runs the strategy it names.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import importlib
import inspect
import json
import logging
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

REAL = REPO.parent / "shared" / "data" / "real"
CACHE = REPO / "benchmarks" / "results" / "cache"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "few_labels"
SETS = ("color", "type", "orientation")
QUICK_BUDGETS = (100, 300)
QUICK_EPOCHS = 4
QUICK_SEMI_IMAGES = 1000
BACKBONE_SPECS = ("resnet18-random", "resnet18-imagenet", "efficientnet_lite0-imagenet")
DEFAULT_STRATEGIES = ("random", "typiclust", "probcover", "entropy", "entropy+kcenter",
                      "entropy+stochastic", "entropy+stochastic+kcenter", "auto")
DEFAULT_BUDGETS = (20, 50, 100, 200, 300, 500, 700, 1000)
MAX_LOAD = 0.5

log = logging.getLogger("bench_few_labels")


# -- machine -----------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    """nproc, CPU model and load average, printed before anything runs and kept in outputs."""
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"nproc": nproc, "cpu": model, "loadavg": [round(x, 2) for x in os.getloadavg()],
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": platform.python_version()}


# -- data --------------------------------------------------------------------------------------

@dataclass
class SetData:
    """One real set: files, class indices of its attribute, group keys and the fixed split."""

    name: str
    attribute: str
    classes: tuple[str, ...]
    paths: list[Path]
    y: np.ndarray                 # (N,) class index
    groups: list[str]
    pool: np.ndarray              # indices into paths
    test: np.ndarray

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def digest(self) -> str:
        h = hashlib.sha1()
        for p in self.paths:
            h.update(p.name.encode())
        return h.hexdigest()[:10]


def split_of(groups: Sequence[str], *, test_fraction: float, seed: int) -> list[str]:
    """"test" or "pool" per file, never random per file.

    A set whose ``source`` column is exactly {train, test} (the colour set) ships its own split:
    use it. Otherwise whole groups go to one side (``data.splits.assign_split`` on the group
    keys of ``load_labels_csv``: contiguous blocks of 50 files per source), so near-duplicate
    video frames (GTI) stay together.
    """
    from data.splits import assign_split

    sources = [g.rsplit("#", 1)[0] for g in groups]
    if set(sources) == {"train", "test"}:
        return ["test" if s == "test" else "pool" for s in sources]
    fractions = {"test": test_fraction, "train": 1 - test_fraction}
    return ["test" if assign_split(g, fractions, seed) == "test" else "pool" for g in groups]


def load_set(root: Path, name: str, *, max_images: int | None = None, split_seed: int = 0,
             test_fraction: float = 0.2) -> SetData:
    """Read ``<root>/<name>/labels.csv``, split it, optionally keep a seeded subset.

    The split is decided on the full set first; ``--max-images`` then keeps a seeded random
    subset of each side in proportion (smoke runs), so it can never move an image across.
    """
    from data.ingest import load_labels_csv
    from data.schema import DEFAULT_SCHEMA

    folder = root / name
    truth, groups = load_labels_csv(folder / "labels.csv", DEFAULT_SCHEMA)
    attribute = name
    files = sorted(f for f, v in truth.items() if attribute in v)
    if not files:
        raise SystemExit(f"{folder}/labels.csv labels no {attribute!r}")
    group_of = [groups.get(f, f) for f in files]
    split = np.array(split_of(group_of, test_fraction=test_fraction, seed=split_seed))
    keep = np.arange(len(files))
    if max_images is not None and len(files) > max_images:
        rng = np.random.default_rng(split_seed)
        parts = []
        for side in ("pool", "test"):
            idx = np.flatnonzero(split == side)
            n = int(round(max_images * len(idx) / len(files)))
            parts.append(rng.choice(idx, size=min(n, len(idx)), replace=False))
        keep = np.sort(np.concatenate(parts))
    files = [files[i] for i in keep]
    group_of = [group_of[i] for i in keep]
    split = split[keep]
    classes = DEFAULT_SCHEMA.classes[attribute]
    y = np.array([classes.index(truth[f][attribute]) for f in files], dtype=np.int64)
    return SetData(name, attribute, tuple(classes), [folder / f for f in files], y, group_of,
                   pool=np.flatnonzero(split == "pool"), test=np.flatnonzero(split == "test"))


def load_pixels(data: SetData, size: int) -> np.ndarray:
    """uint8 ``(N, size, size, 3)`` RGB, decoded and resized like ingestion does."""
    from data.images import load_rgb
    from data.preprocess import resize_square

    out = np.zeros((len(data.paths), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(data.paths):
        out[i] = resize_square(load_rgb(path), size)
    return out


# -- embeddings --------------------------------------------------------------------------------

def load_backbone_spec(spec: str, weights: Path | None = None) -> tuple[Any, str] | None:
    """(Backbone, origin sentence) for ``name-random``/``name-imagenet``; None = skip (said).

    ``weights``: a local ImageNet file for the backbone (``--resnet18-weights``), passed as
    ``load_backbone(weights_path=...)``.
    """
    import torch
    from models import backbones

    name, _, kind = spec.rpartition("-")
    if name not in getattr(backbones, "BACKBONES", ()):
        print(f"  skip {spec}: backbone {name!r} is not available in models.backbones")
        return None
    torch.manual_seed(0)  # random init is part of the spec: make it the same every run
    extra = {"weights_path": weights} if (weights and kind != "random") else {}
    bb = backbones.load_backbone(name, pretrained=(kind != "random"), **extra)
    if kind != "random" and not bb.origin.pretrained:
        print(f"  skip {spec}: pretrained weights do not load here ({bb.origin.detail})")
        return None
    return bb, bb.origin.sentence()


def embeddings(spec: str, data: SetData, size: int, pixels: Callable[[], np.ndarray],
               cache_dir: Path, weights: Path | None = None, mirrored: bool = False
               ) -> tuple[np.ndarray, str] | None:
    """Cached ``(N, D)`` float32 features of every image of ``data`` (computed once);
    ``mirrored``: of the images flipped left-right (the product's mirror views)."""
    from data.balance import flip_image
    from models.embed import embed_images

    view = "_mirror" if mirrored else ""
    path = cache_dir / (f"{data.name}_{spec}_{size}px{view}_{len(data.paths)}_"
                        f"{data.digest()}.npy")
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return np.load(path), json.loads(meta.read_text())["origin"]
    loaded = load_backbone_spec(spec, weights)
    if loaded is None:
        return None
    bb, origin = loaded
    t = time.perf_counter()
    images = pixels()
    feats = embed_images(bb.module, flip_image(images) if mirrored
                         else images, size)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, feats)
    meta.write_text(json.dumps({"origin": origin, "seconds": time.perf_counter() - t}))
    print(f"  {spec}{view}: embedded {len(feats)} images in {time.perf_counter() - t:.1f} s "
          f"({origin})", flush=True)
    return feats, origin


# -- heads on embeddings -----------------------------------------------------------------------

def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class Head:
    """A per-head classifier on embeddings; constant when one class is labelled."""

    n_classes: int
    c: float = 1.0
    model: Any = None
    constant: int | None = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> "Head":
        from sklearn.linear_model import LogisticRegression

        if len(np.unique(y)) < 2:
            self.constant = int(y[0])
            return self
        self.model = LogisticRegression(C=self.c, max_iter=500).fit(x, y)
        return self

    def probs(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), self.n_classes))
        if self.constant is not None:
            out[:, self.constant] = 1.0
            return out
        out[:, self.model.classes_] = self.model.predict_proba(x)
        return out


@dataclass
class MirrorHead:
    """The product's mirror-aware head refit (:func:`models.heads.fit_heads` with
    ``mirrored=``): each labelled row trains as itself and as its mirror view, with its class
    through ``flip`` (class index -> class index of the mirror); prediction averages both
    views. Features arrive standardised, so the reference scaling is the identity."""

    classes: Sequence[str]
    flip: np.ndarray
    c: float = 1.0
    fit_: Any = None

    def fit(self, x: np.ndarray, y: np.ndarray, xm: np.ndarray) -> "MirrorHead":
        from models.heads import fit_heads

        names = list(self.classes)
        mirror_map = {"y": {names[k]: names[int(self.flip[k])] for k in range(len(names))}}
        self.fit_ = fit_heads(x, [{"y": names[int(v)]} for v in y], {"y": names},
                              C=self.c, mirrored=xm, mirror_map=mirror_map,
                              reference=np.stack([-np.ones(x.shape[1]), np.ones(x.shape[1])]))
        # (that reference has mean 0 and std 1 per feature: the identity scaling)
        return self

    def probs(self, x: np.ndarray, xm: np.ndarray) -> np.ndarray:
        return self.fit_.predict_proba(x, xm)["y"]


def spread_augment(x_lab: np.ndarray, y_lab: np.ndarray, x_pool: np.ndarray, n_classes: int,
                   threshold: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Labelled rows + confident label-spreading pseudo-labels of the pool (in memory only)."""
    from models.semi import confident_pseudo_labels, spread_labels

    if len(x_pool) == 0:
        return x_lab, y_lab, 0
    x = np.vstack([x_lab, x_pool])
    y = np.concatenate([y_lab, np.full(len(x_pool), -1)])
    probs = spread_labels(x, y, n_classes)[len(x_lab):]
    rows, cls = confident_pseudo_labels(probs, threshold)
    return np.vstack([x_lab, x_pool[rows]]), np.concatenate([y_lab, cls]), len(rows)


# -- strategies --------------------------------------------------------------------------------

SELECTION_MODULES = ("core.typicality", "core.diversity", "core.acquisition")


def _find(names: Sequence[str], modules: Sequence[str] = SELECTION_MODULES) -> Callable | None:
    for mod_name in modules:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        for name in names:
            fn = getattr(mod, name, None)
            if callable(fn):
                return fn
    return None


def _accepts(fn: Callable, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _call(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` with the keyword arguments its signature accepts (synonyms tolerated)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn(*args, **kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(*args, **kwargs)
    return fn(*args, **{k: v for k, v in kwargs.items() if k in params})


@dataclass
class Context:
    """What a strategy may look at in one round: pool embeddings, labelled rows, head probs."""

    x_pool: np.ndarray            # (P, D) normalised embeddings of the whole pool
    labelled: np.ndarray          # (P,) bool
    probs: np.ndarray | None      # (P, K) head probabilities, None before the first fit
    seed: int
    round: int
    n_classes: int = 2
    memo: dict[str, Any] = field(default_factory=dict)   # per-run constants (ProbCover delta)

    @property
    def candidates(self) -> np.ndarray:
        return np.flatnonzero(~self.labelled)

    @property
    def existing(self) -> np.ndarray | None:
        return self.x_pool[self.labelled] if self.labelled.any() else None

    @property
    def round_seed(self) -> int:
        return self.seed * 1000 + self.round


Selector = Callable[[Context, int], np.ndarray]   # -> indices into the pool


def _entropy_scores(ctx: Context) -> np.ndarray:
    from core.acquisition import normalised_entropy

    return normalised_entropy(np.clip(ctx.probs[ctx.candidates], 1e-12, 1.0))


def _random(ctx: Context, k: int) -> np.ndarray:
    rng = np.random.default_rng([ctx.seed, ctx.round])
    return rng.choice(ctx.candidates, size=min(k, len(ctx.candidates)), replace=False)


def _entropy(ctx: Context, k: int) -> np.ndarray:
    if ctx.probs is None:
        return _random(ctx, k)
    cand = ctx.candidates
    return cand[np.argsort(-_entropy_scores(ctx), kind="stable")[:k]]


def _entropy_kcenter(ctx: Context, k: int) -> np.ndarray:
    from core.diversity import select_diverse

    if ctx.probs is None:
        return _random(ctx, k)
    cand = ctx.candidates
    local = select_diverse(_entropy_scores(ctx), ctx.x_pool[cand], k, existing=ctx.existing,
                           seed=ctx.seed)
    return cand[np.asarray(local, dtype=np.int64)]


def _typicality_selector(fn: Callable, delta_fn: Callable | None) -> Selector:
    """TypiClust/ProbCover: ``fn(candidate embeddings, k, labelled=..., seed=...)``."""
    def select(ctx: Context, k: int) -> np.ndarray:
        cand = ctx.candidates
        kwargs: dict[str, Any] = dict(existing=ctx.existing, labelled=ctx.existing,
                                      seed=ctx.round_seed, random_state=ctx.round_seed)
        if _accepts(fn, "delta"):
            if delta_fn is None:
                raise RuntimeError("probcover needs delta and there is no choose_delta()")
            if "delta" not in ctx.memo:  # the whole pool never changes within a run
                ctx.memo["delta"] = float(_call(delta_fn, ctx.x_pool, ctx.n_classes,
                                                seed=ctx.seed))
            kwargs["delta"] = ctx.memo["delta"]
        local = _call(fn, ctx.x_pool[cand], k, **kwargs)
        return cand[np.asarray(local, dtype=np.int64)[:k]]
    return select


def _uncertainty_selector(sampling: str, diversity: str | None) -> Selector | None:
    """Entropy with a stochastic sampler (and optional core-set), as the product's queue does.

    Uses ``core.queue.select`` (arrays in, rows out) when it exists, else
    ``core.acquisition.stochastic_batch`` directly; None when neither is there.
    """
    queue_select = _find(("select",), ("core.queue",))
    if queue_select is not None and not _accepts(queue_select, "sampling"):
        queue_select = None
    stochastic = _find(("stochastic_batch",), ("core.acquisition",))
    if queue_select is None and (stochastic is None or diversity):
        return None

    def select(ctx: Context, k: int) -> np.ndarray:
        if ctx.probs is None:
            return _random(ctx, k)
        cand = ctx.candidates
        scores = _entropy_scores(ctx)
        if queue_select is not None:
            local = queue_select(scores, k, embeddings=ctx.x_pool[cand], diversity=diversity,
                                 sampling=sampling, existing=ctx.existing, seed=ctx.round_seed)
        else:
            local = _call(stochastic, scores, k, mode=sampling, seed=ctx.round_seed)
        return cand[np.asarray(local, dtype=np.int64)[:k]]
    return select


def _auto_selector(chooser: Callable, typical: Selector | None) -> Selector:
    """``core.selection.choose_auto`` decides per round; the harness runs what it chose."""
    def select(ctx: Context, k: int) -> np.ndarray:
        n = int(ctx.labelled.sum())
        mean_h = float(_entropy_scores(ctx).mean()) if ctx.probs is not None else None
        choice = _call(chooser, n, ctx.probs is not None, mean_h)
        name = getattr(choice, "strategy", choice)
        if name in ("typiclust", "probcover"):
            if typical is None:
                raise RuntimeError(f"auto chose {name}, which is not available")
            return typical(ctx, k)
        run = _uncertainty_selector(getattr(choice, "sampling", "power"),
                                    getattr(choice, "diversity", None))
        if run is None:
            raise RuntimeError(f"auto chose {name}; no sampler available")
        ctx.memo.setdefault("auto_rounds", []).append(f"{n}:{name}")
        return run(ctx, k)
    return select


def build_selectors(names: Sequence[str]) -> tuple[dict[str, Selector], dict[str, str]]:
    """(available selectors, {name: why not available}) for the requested strategy names."""
    found: dict[str, Selector] = {"random": _random, "entropy": _entropy,
                                  "entropy+kcenter": _entropy_kcenter}
    missing: dict[str, str] = {}
    delta_fn = _find(("choose_delta",))
    for name in ("typiclust", "probcover"):
        fn = _find((name,))
        if fn is not None:
            found[name] = _typicality_selector(fn, delta_fn)
        else:
            missing[name] = f"no {name}() in {'/'.join(SELECTION_MODULES)}"
    for name, diversity in (("entropy+stochastic", None), ("entropy+stochastic+kcenter", "kcenter")):
        sel = _uncertainty_selector("power", diversity)
        if sel is not None:
            found[name] = sel
        else:
            missing[name] = "no stochastic sampling (core.queue.select / stochastic_batch)"
    chooser = _find(("choose_auto",), ("core.selection", "core.acquisition"))
    if chooser is not None:
        found["auto"] = _auto_selector(chooser, found.get("typiclust"))
    else:
        missing["auto"] = "no choose_auto() in core.selection"
    selectors = {n: found[n] for n in names if n in found}
    reasons = {n: missing.get(n, f"unknown strategy {n!r}") for n in names if n not in found}
    return selectors, reasons


# -- the simulated loop ------------------------------------------------------------------------

@dataclass
class Trajectory:
    """Labels a strategy picked, in order (pool indices), and accuracy at each budget."""

    order: list[int] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)


def simulate(data: SetData, x_all: np.ndarray, select: Selector, *, strategy: str, seed: int,
             budgets: Sequence[int], max_batch: int, semi: bool, spread_threshold: float,
             base: dict[str, Any], head_c: float = 1.0,
             x_mirror: np.ndarray | None = None, flip: np.ndarray | None = None) -> Trajectory:
    """One AL run on embeddings: rounds of <= max_batch, accuracy recorded at each budget.

    ``x_mirror`` (mirror views of every image, row for row) and ``flip`` (class -> mirrored
    class): the heads are the product's mirror-aware refit (:class:`MirrorHead`), for
    selection and test alike.
    """
    x = normalise(x_all)
    x_pool, y_pool = x[data.pool], data.y[data.pool]
    y_test = data.y[data.test]
    # the head sees features standardised with the pool's statistics (unlabelled pool only,
    # never the test rows); selection keeps the cosine geometry of x_pool
    mu, sd = x_pool.mean(axis=0), x_pool.std(axis=0) + 1e-6
    z_pool, z_test = (x_pool - mu) / sd, (x[data.test] - mu) / sd
    if x_mirror is not None:
        xm = normalise(x_mirror)
        zm_pool, zm_test = (xm[data.pool] - mu) / sd, (xm[data.test] - mu) / sd

        def fit_head(rows: np.ndarray) -> Any:
            return MirrorHead(data.classes, flip, c=head_c).fit(z_pool[rows], y_pool[rows],
                                                               zm_pool[rows])

        def pool_probs(h: Any) -> np.ndarray:
            return h.probs(z_pool, zm_pool)

        def test_probs(h: Any) -> np.ndarray:
            return h.probs(z_test, zm_test)
    else:
        def fit_head(rows: np.ndarray) -> Any:
            return Head(data.n_classes, c=head_c).fit(z_pool[rows], y_pool[rows])

        def pool_probs(h: Any) -> np.ndarray:
            return h.probs(z_pool)

        def test_probs(h: Any) -> np.ndarray:
            return h.probs(z_test)
    labelled = np.zeros(len(data.pool), dtype=bool)
    traj = Trajectory()
    head: Any = None
    memo: dict[str, Any] = {}
    rnd = 0
    started = time.perf_counter()
    for budget in sorted(b for b in budgets if b <= len(data.pool)):
        while labelled.sum() < budget:
            k = min(max_batch, budget - int(labelled.sum()))
            probs = pool_probs(head) if head is not None else None
            picks = np.asarray(select(Context(x_pool, labelled, probs, seed, rnd,
                                              data.n_classes, memo), k), dtype=np.int64)
            picks = picks[~labelled[picks]][:k]
            if len(picks) == 0:
                raise RuntimeError(f"{strategy} picked nothing in round {rnd}")
            labelled[picks] = True
            traj.order.extend(int(i) for i in picks)
            rnd += 1
            head = fit_head(labelled)
        acc = float((test_probs(head).argmax(1) == y_test).mean())
        traj.rows.append(base | {"strategy": strategy, "semi": "none", "seed": seed,
                                 "budget": budget, "accuracy": acc, "mode": "head-only",
                                 "pseudo_labels": 0,
                                 "seconds": round(time.perf_counter() - started, 2)})
        if semi and x_mirror is None:
            t = time.perf_counter()
            xs, ys, n_pseudo = spread_augment(z_pool[labelled], y_pool[labelled],
                                              z_pool[~labelled], data.n_classes,
                                              spread_threshold)
            semi_head = Head(data.n_classes, c=head_c).fit(xs, ys)
            acc = float((semi_head.probs(z_test).argmax(1) == y_test).mean())
            traj.rows.append(base | {"strategy": strategy, "semi": "labelspread", "seed": seed,
                                     "budget": budget, "accuracy": acc, "mode": "head-only",
                                     "pseudo_labels": n_pseudo,
                                     "seconds": round(time.perf_counter() - t, 2)})
    return traj


# -- full fine-tuning through models.train -----------------------------------------------------

def finetune(data: SetData, pixels: np.ndarray, pool_picks: Sequence[int], *, spec: str,
             seed: int, epochs: int, size: int, threads: int, semi: str, workdir: Path,
             weights: Path | None = None, semi_max_images: int | None = None,
             mirror: bool = False) -> dict[str, Any]:
    """Train the product's model on ``pool_picks`` (10 % of them as val) and test it
    (``mirror``: with ``TrainConfig.mirror_views``).

    The whole set goes into a fresh workspace (pool images unlabelled in "train", so FixMatch
    can use them; test images labelled in "test"); only the picked pool images are labelled.
    """
    import hashlib as _h

    from data.cache import ImageCache
    from data.workspace import Workspace, WorkspaceConfig
    from core.training import train_and_promote
    from models.train import TrainConfig

    ws = Workspace(workdir / f"ft_{data.name}_{spec}_{seed}_{len(pool_picks)}_{semi}_"
                   f"{time.time_ns()}").init(WorkspaceConfig(cache_size=size))
    picks = [int(data.pool[i]) for i in pool_picks]
    rng = np.random.default_rng(seed)
    val = set(rng.choice(picks, size=max(1, len(picks) // 10), replace=False).tolist())
    cache = ImageCache(ws.cache_dir, size)
    labelled = set(picks)
    rows = cache.append(pixels)  # one write (and fsync) for the whole set
    with ws.store() as store, store.transaction():
        test_set = set(data.test.tolist())
        for i in range(len(data.paths)):
            split = "test" if i in test_set else ("val" if i in val else "train")
            row = rows[i]
            sha = _h.sha256(f"{data.name}:{i}".encode()).hexdigest()
            image_id, _ = store.add_image(path=str(data.paths[i]), name=data.paths[i].name,
                                          sha256=sha, width=size, height=size, nbytes=0,
                                          split=split, cache_row=row)
            if i in labelled or i in test_set:
                store.add_label(image_id, {data.attribute: data.classes[int(data.y[i])]},
                                source="import")
    name, _, kind = spec.rpartition("-")
    kwargs: dict[str, Any] = dict(epochs=epochs, image_size=size, seed=seed,
                                  num_threads=threads, pretrained=(kind != "random"))
    config_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if "semi_supervised" in config_fields:
        kwargs["semi_supervised"] = semi
        if semi != "none" and semi_max_images is not None:
            kwargs["semi_max_images"] = int(semi_max_images)
    elif semi != "none":
        return {"error": "models.train has no semi_supervised option"}
    if mirror:
        kwargs["mirror_views"] = True
    if "backbone" in config_fields:
        kwargs["backbone"] = name
    elif name != "resnet18":
        return {"error": f"models.train has no backbone option for {name}"}
    if weights and kind != "random":
        kwargs["weights" if "weights" in config_fields else "checkpoint"] = str(weights)
    t = time.perf_counter()
    outcome = train_and_promote(ws, TrainConfig(**kwargs))  # train, evaluate on test, promote
    result, report = outcome.train, outcome.evaluation.to_dict()
    return {"accuracy": report["heads"][data.attribute]["accuracy"], "origin": result.origin,
            "seconds": round(time.perf_counter() - t, 1), "train_images": result.train_images,
            "val_images": result.val_images}


# -- summaries ---------------------------------------------------------------------------------

def mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else float("nan"))


def fmt(values: Sequence[float]) -> str:
    if not values:
        return "—"
    m, s = mean_std(values)
    return f"{m:.3f}" if math.isnan(s) else f"{m:.3f} ± {s:.3f}"


def curves(rows: Sequence[dict[str, Any]]) -> dict[tuple, dict[int, list[float]]]:
    """(set, backbone, strategy, semi, mode) -> {budget: [accuracy per seed]}."""
    out: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("accuracy") is None:
            continue
        out[(r["set"], r["backbone"], r["strategy"], r["semi"], r["mode"])][int(r["budget"])] \
            .append(float(r["accuracy"]))
    return out


def labels_to_reach(curve: dict[int, list[float]], target: float) -> int | None:
    """Smallest measured budget whose mean accuracy reaches ``target``; None if none does."""
    for budget in sorted(curve):
        if np.mean(curve[budget]) >= target - 1e-12:
            return budget
    return None


def reference(rows: Sequence[dict[str, Any]], set_name: str, backbone: str, budget: int
              ) -> tuple[float | None, str]:
    """A for one (set, backbone): fine-tuned random@budget if measured, else head-only proxy.

    A variant of a backbone (``<spec>+mirror``) is judged against the plain backbone's A: the
    reference is the write-up's protocol, not an improved pipeline.
    """
    backbone = backbone.split("+")[0]
    c = curves(rows)
    ft = c.get((set_name, backbone, "random", "none", "finetune"), {}).get(budget)
    if ft:
        return float(np.mean(ft)), f"fine-tuned, {budget} random labels"
    head = c.get((set_name, backbone, "random", "none", "head-only"), {}).get(budget)
    if head:
        return float(np.mean(head)), f"head-only proxy, {budget} random labels"
    return None, "not measured"


def best_pipeline(rows: Sequence[dict[str, Any]], set_name: str, backbone: str, target: float
                  ) -> tuple[str, str, int | None]:
    """(strategy, semi, labels) of the head-only pipeline reaching ``target`` with fewest labels.

    Ties on the label count go to the higher mean accuracy at that count.
    """
    best: tuple[str, str, int | None] = ("random", "none", None)
    best_key: tuple[int, float] | None = None
    for (s, b, strat, semi, mode), curve in curves(rows).items():
        if (s, b, mode) != (set_name, backbone, "head-only"):
            continue
        n = labels_to_reach(curve, target)
        if n is None:
            continue
        key = (n, -float(np.mean(curve[n])))
        if best_key is None or key < best_key:
            best, best_key = (strat, semi, n), key
    return best


def at(rows: Sequence[dict[str, Any]], key: tuple, budget: int) -> float | None:
    v = curves(rows).get(key, {}).get(budget)
    return float(np.mean(v)) if v else None


def ablation(rows: Sequence[dict[str, Any]], set_name: str, budget: int, backbones: Sequence[str],
             strategies: Sequence[str]) -> dict[str, Any] | None:
    """Sequential gains at ``budget`` (head-only): backbone, then selection, then semi-supervised.

    Baseline: ``resnet18-random`` + random selection + supervised. Full: the best pretrained
    backbone (highest random-selection accuracy), the best strategy on it, label spreading.
    Shares are each gain over the total gain (may be negative; n/a when a part is missing).
    """
    base_key = (set_name, "resnet18-random", "random", "none", "head-only")
    base = at(rows, base_key, budget)
    if base is None:
        return None
    cands = [b for b in backbones if b != "resnet18-random" and "+" not in b
             and at(rows, (set_name, b, "random", "none", "head-only"), budget) is not None]
    bb = max(cands, key=lambda b: at(rows, (set_name, b, "random", "none", "head-only"), budget),
             default="resnet18-random")
    a_bb = at(rows, (set_name, bb, "random", "none", "head-only"), budget)
    strat_acc = {s: at(rows, (set_name, bb, s, "none", "head-only"), budget) for s in strategies}
    strat_acc = {s: v for s, v in strat_acc.items() if v is not None}
    strat = max(strat_acc, key=strat_acc.get) if strat_acc else "random"
    a_sel = strat_acc.get(strat, a_bb)
    a_semi = at(rows, (set_name, bb, strat, "labelspread", "head-only"), budget)
    a_mirror = at(rows, (set_name, f"{bb}+mirror", strat, "none", "head-only"), budget)
    gains = {"backbone": a_bb - base, "selection": a_sel - a_bb,
             "semi-supervised": (a_semi - a_sel) if a_semi is not None else None,
             "mirror views": (a_mirror - a_sel) if a_mirror is not None else None}
    # semi-supervised and mirror views are each measured on top of the selection step
    total = sum(g for g in gains.values() if g is not None)
    shares = {k: (g / total if (g is not None and abs(total) > 1e-12) else None)
              for k, g in gains.items()}
    return {"budget": budget, "baseline": base, "backbone": bb, "strategy": strat,
            "accuracy": {"baseline": base, "+backbone": a_bb, "+selection": a_sel,
                         "+semi": a_semi, "+mirror": a_mirror}, "gains": gains,
            "shares": shares}


def write_outputs(out: Path, rows: list[dict[str, Any]], info: dict[str, Any],
                  skipped: dict[str, str], args: argparse.Namespace) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = ["set", "backbone", "origin", "strategy", "semi", "mode", "seed", "budget",
              "accuracy", "pseudo_labels", "seconds", "error"]
    with open(out.with_suffix(".csv"), "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    budgets = sorted({int(r["budget"]) for r in rows})
    c = curves(rows)
    lines = ["# Learning from few labels", "",
             f"Command: `{info['command']}`  ",
             f"Machine: {info['nproc']} CPUs, {info['cpu']}; load average at start "
             f"{' '.join(map(str, info['loadavg']))}, at end "
             f"{' '.join(map(str, info.get('loadavg_end', [])))}; {info['started']}; "
             f"wall {info.get('wall_s', 0):.0f} s.", "",
             "Test accuracy, mean ± sample std over seeds. **head-only** = logistic-regression "
             "head on cached embeddings (the AL loop simulated in rounds); **finetune** = full "
             "training through `models.train.train`.", ""]
    if skipped:
        lines += ["Skipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()), ""]
    summary: dict[str, Any] = {"machine": info, "skipped": skipped, "sets": {}}
    for set_name in args.sets:
        lines += [f"## {set_name}", ""]
        backbones = [b for spec in BACKBONE_SPECS for b in (spec, f"{spec}+mirror")
                     if any(k[0] == set_name and k[1] == b for k in c)]
        for bb in backbones:
            origin = next((r["origin"] for r in rows if r["set"] == set_name
                           and r["backbone"] == bb), "")
            lines += [f"### {bb} ({origin})", "",
                      "| strategy | semi | mode | " + " | ".join(map(str, budgets)) + " |",
                      "|---|---|---|" + "---|" * len(budgets)]
            for key in sorted(k for k in c if k[0] == set_name and k[1] == bb):
                cells = [fmt(c[key].get(b, [])) for b in budgets]
                lines.append(f"| {key[2]} | {key[3]} | {key[4]} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += [f"### Labels to reach A ({set_name})", "",
                  "| backbone | A | A is | best pipeline (head-only) | labels | ratio vs "
                  f"{args.reference_budget} |", "|---|---|---|---|---|---|"]
        set_summary: dict[str, Any] = {}
        for bb in backbones:
            a, how = reference(rows, set_name, bb, args.reference_budget)
            if a is None:
                continue
            strat, semi, n = best_pipeline(rows, set_name, bb, a)
            ratio = f"{args.reference_budget / n:.2f}×" if n else "not reached"
            lines.append(f"| {bb} | {a:.3f} | {how} | {strat} + {semi} | {n or '—'} | {ratio} |")
            set_summary[bb] = {"A": a, "A_is": how, "strategy": strat, "semi": semi,
                               "labels": n, "finetuned_points": {}}
            for key, curve in c.items():
                if key[:2] != (set_name, bb) or key[4] != "finetune":
                    continue
                for budget, accs in sorted(curve.items()):
                    if (key[2], key[3], budget) == ("random", "none", args.reference_budget):
                        continue
                    m = float(np.mean(accs))
                    lines.append(f"| {bb} | {a:.3f} | {how} | fine-tuned {key[2]} + {key[3]} "
                                 f"@ {budget}: {fmt(accs)} | {budget if m >= a else '—'} | "
                                 f"{'reaches A' if m >= a else 'below A'} |")
                    set_summary[bb]["finetuned_points"][f"{key[2]}+{key[3]}@{budget}"] = m
        abl = ablation(rows, set_name, args.ablation_budget, backbones, args.strategies)
        lines.append("")
        if abl:
            acc, shares = abl["accuracy"], abl["shares"]

            def pct(v: float | None) -> str:
                return "n/a" if v is None else f"{100 * v:.0f} %"

            def num(v: float | None) -> str:
                return "n/a" if v is None else f"{v:.3f}"

            lines += [f"### Ablation at {abl['budget']} labels, head-only ({set_name})", "",
                      "| step | accuracy | gain | share |", "|---|---|---|---|",
                      f"| resnet18-random + random + supervised | {num(acc['baseline'])} | | |",
                      f"| + backbone {abl['backbone']} | {num(acc['+backbone'])} | "
                      f"{num(abl['gains']['backbone'])} | {pct(shares['backbone'])} |",
                      f"| + selection {abl['strategy']} | {num(acc['+selection'])} | "
                      f"{num(abl['gains']['selection'])} | {pct(shares['selection'])} |",
                      f"| + semi-supervised (label spreading) | {num(acc['+semi'])} | "
                      f"{num(abl['gains']['semi-supervised'])} | "
                      f"{pct(shares['semi-supervised'])} |",
                      f"| + mirror views instead (same strategy) | {num(acc['+mirror'])} | "
                      f"{num(abl['gains']['mirror views'])} | {pct(shares['mirror views'])} |",
                      ""]
        summary["sets"][set_name] = {"reach": set_summary, "ablation": abl}
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2, default=str),
                                        encoding="utf-8")


# -- main --------------------------------------------------------------------------------------

def weights_for(spec: str, args: argparse.Namespace) -> Path | None:
    return args.resnet18_weights if spec == "resnet18-imagenet" else None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REAL, help="folder holding the real sets")
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    p.add_argument("--backbones", nargs="+", default=list(BACKBONE_SPECS), choices=BACKBONE_SPECS)
    p.add_argument("--strategies", type=lambda s: s.split(","),
                   default=list(DEFAULT_STRATEGIES), help="comma-separated")
    p.add_argument("--budgets", type=lambda s: [int(x) for x in s.split(",")],
                   default=None, help="comma-separated label budgets (default: "
                   f"{','.join(map(str, DEFAULT_BUDGETS))}; --quick: "
                   f"{','.join(map(str, QUICK_BUDGETS))})")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1)")
    p.add_argument("--max-batch", type=int, default=100, help="largest batch per AL round")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--max-images", type=int, default=None,
                   help="seeded subset of whole groups per set (smoke runs)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--semi-strategies", type=lambda s: s.split(",") if s else [],
                   default=["random", "auto"],
                   help="strategies that also get the label-spreading row ('' for none)")
    p.add_argument("--spread-threshold", type=float, default=0.9,
                   help="label-spreading confidence for a pseudo-label (fixed, not tuned)")
    p.add_argument("--head-c", type=float, default=1.0,
                   help="inverse L2 strength of the logistic-regression head (fixed, not tuned "
                        "on test; features are standardised with the pool's statistics)")
    p.add_argument("--reference-budget", type=int, default=1000,
                   help="A = accuracy with this many random labels")
    p.add_argument("--ablation-budget", type=int, default=500)
    p.add_argument("--finetune", action="store_true",
                   help="also fine-tune (models.train): A and the best pipeline's claimed point")
    p.add_argument("--mirror", action="store_true",
                   help="also run every strategy with the product's mirror-aware heads "
                        "(backbone '<spec>+mirror'; A stays the plain backbone's)")
    p.add_argument("--finetune-mirror", action="store_true",
                   help="fine-tune with mirror views (TrainConfig.mirror_views); rows are "
                        "reported as backbone '<spec>+mirror'")
    p.add_argument("--merge-rows", type=Path, default=None,
                   help="CSV of an earlier run whose fine-tuned rows (e.g. A) join this one's")
    p.add_argument("--finetune-points", default="",
                   help="with --finetune: fine-tune exactly these 'strategy@budget' points "
                        "(comma-separated, e.g. random@500,random@1000) instead of A and the "
                        "claimed point")
    p.add_argument("--finetune-semi", action="store_true",
                   help="with --finetune: the claimed point again with FixMatch")
    p.add_argument("--semi", choices=("none", "fixmatch"), default="none",
                   help="with --finetune/--quick: also fine-tune with FixMatch (fixmatch)")
    p.add_argument("--semi-max-images", type=int, default=None,
                   help="FixMatch: seeded subset of the unlabelled pool (--quick: "
                        f"{QUICK_SEMI_IMAGES})")
    p.add_argument("--quick", action="store_true",
                   help="one set, one seed, one pretrained backbone, two budgets, random "
                        "selection, fine-tuned with and without --semi (see the docstring)")
    p.add_argument("--finetune-epochs", type=int, default=None,
                   help=f"default 8 (--quick: {QUICK_EPOCHS})")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resnet18-weights", type=Path, default=None,
                   help="local torchvision ResNet18 ImageNet file for resnet18-imagenet "
                        "(else torchvision's cache/download; skipped when neither works)")
    p.add_argument("--cache-dir", type=Path, default=CACHE)
    p.add_argument("--workdir", type=Path, default=None, help="fine-tuning workspaces (temp)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output path without suffix")
    p.add_argument("--force", action="store_true",
                   help=f"run even when the 1-min load average exceeds {MAX_LOAD}")
    args = p.parse_args(argv)
    if args.semi == "fixmatch":
        args.finetune_semi = True
    if args.quick:
        pretrained = [b for b in args.backbones if not b.endswith("-random")]
        if args.backbones == list(BACKBONE_SPECS):  # default: the one pretrained everywhere
            pretrained = ["efficientnet_lite0-imagenet"]
        if not pretrained:
            p.error("--quick needs a pretrained backbone in --backbones")
        args.sets, args.seeds, args.backbones = args.sets[:1], 1, pretrained[:1]
        args.budgets = sorted(args.budgets or QUICK_BUDGETS)[:2]
        args.strategies, args.semi_strategies, args.finetune = ["random"], [], True
        args.finetune_epochs = args.finetune_epochs or QUICK_EPOCHS
        args.semi_max_images = args.semi_max_images or QUICK_SEMI_IMAGES
        args.reference_budget = args.ablation_budget = args.budgets[-1]
        if args.out == DEFAULT_OUT:  # never overwrite the full sweep's committed results
            args.out = DEFAULT_OUT.with_name(DEFAULT_OUT.name + "_quick")
    args.budgets = args.budgets or list(DEFAULT_BUDGETS)
    args.finetune_epochs = args.finetune_epochs or 8
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    info = machine() | {"command": " ".join(shlex.quote(a) for a in [
        "python", "benchmarks/bench_few_labels.py", *(sys.argv[1:] if argv is None else argv)])}
    print(f"command: {info['command']}")
    print(f"machine: nproc={info['nproc']}, cpu={info['cpu']!r}, "
          f"loadavg={info['loadavg']}", flush=True)
    if info["loadavg"][0] > MAX_LOAD and not args.force:
        print(f"refusing to start: 1-min load average {info['loadavg'][0]} > {MAX_LOAD}; "
              "run alone on an idle machine, or pass --force for a smoke run", file=sys.stderr)
        return 3
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    absent = [n for n in args.sets if not (args.data / n / "labels.csv").is_file()]
    if absent:
        print(f"no labels.csv for {', '.join(absent)} under {args.data} (pass --data)",
              file=sys.stderr)
        return 2
    import torch
    torch.set_num_threads(args.threads)
    selectors, skipped = build_selectors(args.strategies)
    for name, why in skipped.items():
        print(f"strategy {name}: not available ({why}); skipped")
    if not selectors:
        print("no strategy to run", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = merged_rows(args.merge_rows, args.sets) if args.merge_rows \
        else []
    seeds = list(range(args.seeds))
    tmp = tempfile.TemporaryDirectory(prefix="few_labels_") if args.finetune else None
    workdir = args.workdir or (Path(tmp.name) if tmp else None)
    try:
        for set_name in args.sets:
            data = load_set(args.data, set_name, max_images=args.max_images,
                            split_seed=args.split_seed, test_fraction=args.test_fraction)
            print(f"{set_name}: {len(data.pool)} pool / {len(data.test)} test images, "
                  f"{data.n_classes} classes", flush=True)
            pixels_cache: list[np.ndarray] = []

            def pixels() -> np.ndarray:
                if not pixels_cache:
                    pixels_cache.append(load_pixels(data, args.image_size))
                return pixels_cache[0]

            for spec in args.backbones:
                emb = embeddings(spec, data, args.image_size, pixels, args.cache_dir,
                                 weights_for(spec, args))
                if emb is None:
                    skipped[f"{set_name}/{spec}"] = "backbone not available here"
                    continue
                x_all, origin = emb
                base = {"set": set_name, "backbone": spec, "origin": origin}
                trajectories: dict[tuple[str, int], Trajectory] = {}
                for strat, select in selectors.items():
                    for seed in seeds:
                        try:
                            traj = simulate(data, x_all, select, strategy=strat, seed=seed,
                                            budgets=args.budgets, max_batch=args.max_batch,
                                            semi=strat in args.semi_strategies,
                                            spread_threshold=args.spread_threshold, base=base,
                                            head_c=args.head_c)
                        except Exception as exc:  # a strategy's API mismatch: say it, go on
                            print(f"  {spec}/{strat}/seed {seed}: failed ({type(exc).__name__}:"
                                  f" {exc}); skipped", flush=True)
                            skipped[f"{set_name}/{spec}/{strat}"] = f"{type(exc).__name__}: {exc}"
                            break
                        trajectories[(strat, seed)] = traj
                        rows.extend(traj.rows)
                    done = [r for r in rows if r["set"] == set_name and r["backbone"] == spec
                            and r["strategy"] == strat and r["semi"] == "none"]
                    if done:
                        last = max(r["budget"] for r in done)
                        print(f"  {spec}/{strat}: acc@{last} = "
                              f"{fmt([r['accuracy'] for r in done if r['budget'] == last])}",
                              flush=True)
                if args.mirror and not spec.endswith("-random"):
                    rows.extend(run_mirrored(args, data, spec, x_all, pixels, selectors, seeds,
                                             skipped))
                if args.finetune and not spec.endswith("-random"):
                    rows.extend(run_finetunes(args, data, pixels(), spec, origin, trajectories,
                                              rows, seeds, workdir))
        info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        info["wall_s"] = time.perf_counter() - started
        write_outputs(args.out, rows, info, skipped, args)
        print(f"wrote {args.out.with_suffix('.csv')}, .md, .json in {info['wall_s']:.0f} s; "
              f"load average at end {info['loadavg_end']}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


def merged_rows(path: Path, sets: Sequence[str]) -> list[dict[str, Any]]:
    """Fine-tuned rows of an earlier run's CSV (``--merge-rows``), e.g. the reference A, so a
    head-only sweep can be judged against it without fine-tuning again."""
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r["mode"] != "finetune" or r["set"] not in sets or not r["accuracy"]:
                continue
            out.append(r | {"seed": int(r["seed"]), "budget": int(r["budget"]),
                            "accuracy": float(r["accuracy"])})
    print(f"merged {len(out)} fine-tuned rows from {path}")
    return out


def run_mirrored(args: argparse.Namespace, data: SetData, spec: str, x_all: np.ndarray,
                 pixels: Callable[[], np.ndarray], selectors: dict[str, Selector],
                 seeds: Sequence[int], skipped: dict[str, str]) -> list[dict[str, Any]]:
    """Every strategy again with the product's mirror-aware heads (backbone ``<spec>+mirror``)."""
    from data.balance import mirror_maps
    from data.schema import DEFAULT_SCHEMA

    emb = embeddings(spec, data, args.image_size, pixels, args.cache_dir,
                     weights_for(spec, args), mirrored=True)
    if emb is None:
        return []
    flips = mirror_maps(DEFAULT_SCHEMA).get(data.attribute, {})
    flip = np.array([data.classes.index(flips.get(c, c)) for c in data.classes])
    base = {"set": data.name, "backbone": f"{spec}+mirror", "origin": emb[1]}
    out: list[dict[str, Any]] = []
    for strat, select in selectors.items():
        for seed in seeds:
            try:
                traj = simulate(data, x_all, select, strategy=strat, seed=seed,
                                budgets=args.budgets, max_batch=args.max_batch, semi=False,
                                spread_threshold=args.spread_threshold, base=base,
                                head_c=args.head_c, x_mirror=emb[0], flip=flip)
            except Exception as exc:  # a strategy's API mismatch: say it, go on
                skipped[f"{data.name}/{spec}+mirror/{strat}"] = f"{type(exc).__name__}: {exc}"
                break
            out.extend(traj.rows)
        done = [r for r in out if r["strategy"] == strat]
        if done:
            last = max(r["budget"] for r in done)
            print(f"  {spec}+mirror/{strat}: acc@{last} = "
                  f"{fmt([r['accuracy'] for r in done if r['budget'] == last])}", flush=True)
    return out


def run_finetunes(args: argparse.Namespace, data: SetData, pixels: np.ndarray, spec: str,
                  origin: str, trajectories: dict[tuple[str, int], Trajectory],
                  rows: list[dict[str, Any]], seeds: Sequence[int], workdir: Path
                  ) -> list[dict[str, Any]]:
    """A (random @ reference budget) and the best head-only pipeline at its claimed budget."""
    out: list[dict[str, Any]] = []
    ref = args.reference_budget
    head_a, _ = reference(rows, data.name, spec, ref)
    strat, semi, claimed = best_pipeline(rows, data.name, spec, head_a) if head_a else \
        ("random", "none", None)
    points = [("random", ref, "none")]
    if getattr(args, "finetune_points", ""):
        points = [(p.split("@")[0], int(p.split("@")[1]), "none")
                  for p in args.finetune_points.split(",") if p.strip()]
    elif getattr(args, "quick", False):  # FixMatch's share: random picks, both budgets, with/without
        semis = ["none", "fixmatch"] if args.finetune_semi else ["none"]
        points = [("random", b, s) for b in args.budgets for s in semis]
    elif claimed is not None and (strat, claimed) != ("random", ref):
        points.append((strat, claimed, "none"))
        if args.finetune_semi:
            points.append((strat, claimed, "fixmatch"))
    for strategy, budget, semi_ft in points:
        for seed in seeds:
            traj = trajectories.get((strategy, seed))
            if traj is None or len(traj.order) < budget:
                continue
            res = finetune(data, pixels, traj.order[:budget], spec=spec, seed=seed,
                           epochs=args.finetune_epochs, size=args.image_size,
                           threads=args.threads, semi=semi_ft, workdir=workdir,
                           weights=weights_for(spec, args),
                           semi_max_images=getattr(args, "semi_max_images", None),
                           mirror=args.finetune_mirror)
            label = f"{spec}+mirror" if args.finetune_mirror else spec
            print(f"  finetune {label}/{strategy}@{budget}/{semi_ft}/seed {seed}: {res}",
                  flush=True)
            out.append({"set": data.name, "backbone": label, "origin": res.get("origin", origin),
                        "strategy": strategy, "semi": semi_ft, "mode": "finetune",
                        "seed": seed, "budget": budget, "accuracy": res.get("accuracy"),
                        "pseudo_labels": None, "seconds": res.get("seconds"),
                        "error": res.get("error")})
    return out


if __name__ == "__main__":
    raise SystemExit(main())
