"""Training the three-head network on labelled images in memory, fast enough on a 2-core CPU.

Recipe (all configurable through :class:`TrainConfig`): Adam (lr 1e-4, weight decay 5e-4),
batch 64, 25 epochs, 128 px; loss = sum over heads of cross-entropy with missing attributes
masked; best checkpoint by validation loss; fixed seeds.

Why it is fast on CPU (measured in benchmarks/bench_train.py, figures in docs/BENCHMARKS.md):
images come from the uint8 cache (no JPEG decoding), the network runs channels-last, and where
the CPU has native bfloat16 (AVX512-BF16/AMX) the forward pass runs under bf16 autocast, which
roughly doubles throughput. Thread count can be pinned with ``num_threads``.

Shape (as torchvision's classification reference): :func:`train_one_epoch` runs one pass over
the loader, :func:`evaluate` measures the validation split, and :func:`train` wires them with
the best-checkpoint and early-stop logic. These are plain functions over in-memory splits and an
output folder; they never touch the project store. Recording the model and deciding whether it
becomes current is :mod:`core.training`'s job, after the test evaluation and the cancel check.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import DataLoader

from data.balance import flip_image, mirror_maps, mirror_permutations
from data.dataset import LabelledImageDataset, SplitData, encode_targets
from data.errors import UserError
from data.progress import CancelFn, Progress, ProgressFn
from data.schema import LabelSchema
from data.transforms import apply_albumentations, eval_transform, train_transform
from models.backbones import WeightsOrigin, offline_advice
from models.embed import embed_images
from models import recipe
from models.heads import fit_heads
from models.checkpoint import CHECKPOINT_NAME, model_meta, save_checkpoint
from models.evaluate import predict_arrays
from models.network import MultiHeadResNet, build_model
from models.semi import DEFAULT_THRESHOLD, SEMI_METHODS, FixMatchTerm

log = logging.getLogger(__name__)

HEAD_INITS: tuple[str, ...] = ("probe", "random")
#: With mirror views, the chance that a training image is drawn mirrored (label mirrored too).
MIRROR_PROB = 0.5
#: Logit bias of a class no training label shows, after a probe: far below the seen classes.
UNSEEN_CLASS_BIAS = -10.0


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored with the model as its params)."""

    epochs: int = 25
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 5e-4
    image_size: int = 128
    warm_start: bool = False            # continue from the current model's weights
    warm_epochs: int | None = None      # epochs for a warm start; None: max(1, epochs // 3)
    balance_orientation: bool = False   # top up mirror-pair classes with flipped copies
    class_weights: bool = False         # inverse-frequency cross-entropy weights per head
    seed: int = 0
    num_threads: int | None = None      # torch intra-op threads; None: leave torch's default
    pretrained: bool = True             # ImageNet weights; False: random init on purpose
    checkpoint: str | None = None       # old name of ``weights``
    backbone: str = "resnet18"          # models.backbones.BACKBONES (warm start keeps the current)
    weights: str | None = None          # local weights file for the backbone (verified)
    channels_last: bool = True
    num_workers: int = 0                # DataLoader workers; 0 is fastest on 2 cores
    patience: int | None = None         # stop after this many epochs without val improvement
    bf16: bool | None = None            # bf16 autocast; None: on where the hardware has it
    augment: bool = True                # False: train on eval-transformed images (benchmarks)
    device: str = "auto"                # "auto" (cuda if available), "cpu", "cuda", ...
    round_id: int | None = None         # round row id to attach the model to; None: latest
    semi_supervised: str = "none"       # "fixmatch": also learn from unlabelled train images
    semi_threshold: float = DEFAULT_THRESHOLD  # pseudo-label only above this confidence
    semi_weight: float = 1.0            # lambda_u, weight of the unlabelled loss
    semi_max_images: int | None = None  # seeded subset of the unlabelled pool; None: all
    head_init: str = "probe"            # "probe": linear-probe the heads first (LP-FT); "random"
    mirror_views: bool = recipe.MIRROR_VIEWS  # train on random mirrors, predict on both views

    def effective_epochs(self) -> int:
        if self.warm_start:
            return self.warm_epochs if self.warm_epochs is not None else max(1, self.epochs // 3)
        return self.epochs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What a run produced. ``status`` is ``"succeeded"`` or ``"cancelled"``.

    ``train_images`` counts the labelled training images; ``train_examples`` also counts the
    mirrored copies flip-balancing adds (the learning curve plots the former).
    """

    status: str
    path: str | None = None
    epochs_run: int = 0
    best_epoch: int | None = None
    best_val_loss: float | None = None
    val_acc: dict[str, float | None] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    images_per_s: float = 0.0
    train_images: int = 0
    train_examples: int = 0
    val_images: int = 0
    balance: dict[str, dict[str, int]] | None = None
    origin: str = ""
    warm_started_from: int | None = None
    bf16: bool = False
    backbone: str = ""
    weights_origin: dict[str, str] = field(default_factory=dict)

    @property
    def cancelled(self) -> bool:
        return self.status == "cancelled"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class TrainingCancelled(Exception):
    """Raised inside the loop when ``should_cancel()`` turns true."""


# -- pieces that are unit-tested on their own ------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast is native (fast) here; emulated bf16 on older CPUs is slower."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def masked_loss(logits: Mapping[str, torch.Tensor], targets: torch.Tensor,
                attributes: Sequence[str],
                weights: Mapping[str, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over heads of cross-entropy over the images labelled for that head.

    ``targets`` is ``(N, n_attributes)`` with ``-1`` for missing. Each head's term is the
    (optionally class-weighted) mean over its present labels; a head with no labels in the batch
    contributes exactly 0 (plain ``ignore_index`` would give NaN there).
    """
    total = torch.zeros((), dtype=torch.float32, device=targets.device)
    per_head: dict[str, float] = {}
    for col, attr in enumerate(attributes):
        t = targets[:, col]
        if not bool((t >= 0).any()):
            per_head[attr] = 0.0
            continue
        w = weights.get(attr) if weights else None
        loss = F.cross_entropy(logits[attr].float(), t, weight=w, ignore_index=-1)
        per_head[attr] = float(loss.detach())
        total = total + loss
    return total, per_head


def class_weight_tensors(targets: np.ndarray, schema: LabelSchema) -> dict[str, torch.Tensor]:
    """Per head, sklearn's "balanced" weights ``n / (K_present * n_c)``; 1 for absent classes."""
    out: dict[str, torch.Tensor] = {}
    for col, attr in enumerate(schema.attributes):
        w = np.ones(schema.num_classes(attr), dtype=np.float64)
        t = targets[:, col]
        t = t[t >= 0]
        if len(t):
            present = np.unique(t)
            w[present] = compute_class_weight("balanced", classes=present, y=t)
        out[attr] = torch.tensor(w, dtype=torch.float32)
    return out


def evaluate(model: MultiHeadResNet, data: SplitData, schema: LabelSchema, image_size: int,
             *, batch_size: int = 256, device: torch.device | None = None,
             channels_last: bool = True) -> tuple[float, dict[str, float | None]]:
    """Unweighted masked loss (mean per head, summed) and per-head accuracy on ``data``.

    Unweighted even when training uses class weights, so val losses of differently configured
    runs (and the best-epoch choice) measure the same thing.
    """
    preds = predict_arrays(model, data.images, image_size, batch_size, device=device,
                           channels_last=channels_last)
    targets = encode_targets(data.labels, schema)
    loss = 0.0
    acc: dict[str, float | None] = {}
    for col, attr in enumerate(schema.attributes):
        mask = targets[:, col] >= 0
        if not mask.any():
            acc[attr] = None
            continue
        logits = torch.from_numpy(preds.logits[attr][mask])
        t = torch.from_numpy(targets[mask, col])
        loss += float(F.cross_entropy(logits, t))
        acc[attr] = float((logits.argmax(1) == t).float().mean())
    return loss, acc


# -- the run --------------------------------------------------------------------------------

@dataclass
class _EpochStats:
    loss: float
    images: int
    seconds: float


def train_one_epoch(model: MultiHeadResNet, loader: DataLoader, optimiser: torch.optim.Optimizer,
                    attributes: Sequence[str], device: torch.device, *,
                    weights: Mapping[str, torch.Tensor] | None = None, use_bf16: bool = False,
                    channels_last: bool = True, should_cancel: CancelFn | None = None,
                    on_step: Any = None, semi: FixMatchTerm | None = None) -> _EpochStats:
    """One pass over ``loader``; ``on_step(step, mean_loss_so_far, images_so_far, seconds)``.

    ``semi`` adds the FixMatch unlabelled term to every step's loss (see :mod:`models.semi`).

    ``should_cancel`` is polled before every step and raises :class:`TrainingCancelled`.
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.train()
    start = time.perf_counter()
    loss_sum, seen = 0.0, 0
    for step, (x, y) in enumerate(loader, start=1):
        if should_cancel is not None and should_cancel():
            raise TrainingCancelled()
        x = x.to(device, non_blocking=True).contiguous(memory_format=fmt)
        y = y.to(device, non_blocking=True)
        autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16)
                    if use_bf16 else contextlib.nullcontext())
        with autocast:
            logits = model(x)
        loss, _ = masked_loss(logits, y, attributes, weights)
        if semi is not None:
            loss = loss + semi.loss(model, device, fmt, use_bf16)
        if loss.requires_grad:  # False only when no image in the batch has a label
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        loss_sum += float(loss.detach()) * len(x)
        seen += len(x)
        if on_step is not None:
            on_step(step, loss_sum / seen, seen, time.perf_counter() - start)
    return _EpochStats(loss_sum / max(seen, 1), seen, time.perf_counter() - start)


def fresh_model(schema: LabelSchema, config: TrainConfig) -> tuple[MultiHeadResNet, WeightsOrigin]:
    """A fresh network on ``config.backbone`` and where its backbone's weights came from.

    Random init happens only when asked (``pretrained=False``): when pretrained weights were
    asked for but cannot be loaded, this refuses with the ways out rather than training a
    network that is barely better than the majority class.
    """
    model, origin = build_model(schema, backbone=config.backbone, pretrained=config.pretrained,
                                weights=config.weights or config.checkpoint,
                                mirror_perms=mirror_permutations(schema) if config.mirror_views
                                else None)
    if config.pretrained and not origin.pretrained:
        raise UserError(f"pretrained weights for {config.backbone} are not available "
                        f"({origin.detail}). {offline_advice(config.backbone)} To train from "
                        "random init anyway, turn pretrained weights off (--no-pretrained).")
    return model, origin


def probe_heads(model: MultiHeadResNet, train_data: SplitData, schema: LabelSchema,
                image_size: int, *, mirror: bool = False) -> dict[str, int]:
    """Start each head from a linear probe on the frozen pretrained features (LP-FT).

    Why: with a few hundred labels, fine-tuning a pretrained backbone under randomly initialised
    heads spends its few steps pushing large, wrong gradients through the backbone, and ends far
    below a linear head on the same frozen features (docs/BENCHMARKS.md, "Learning from few
    labels": Lite0 on type, 0.25 fine-tuned vs 0.61 head-only at 100 labels). Kumar et al.,
    "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution" (ICLR
    2022) fit the linear probe first and fine-tune from it; that is what this does. The probe is
    :func:`models.heads.fit_heads` (the head refit's solver) on un-augmented train images;
    classes no label shows get a far-below bias. Returns the labelled rows per head.

    With ``mirror`` (a network with mirror views) the probe is fitted on each image and its
    mirror, as the head refit does (:mod:`models.heads`), so it predicts what the network's two
    views will average.
    """
    features = embed_images(model.backbone, train_data.images, image_size)
    mirrored = embed_images(model.backbone, flip_image(train_data.images),
                            image_size) if mirror else None
    fit = fit_heads(features, train_data.labels, schema.classes, reference=features,
                    mirrored=mirrored, mirror_map=mirror_maps(schema) if mirror else None)
    with torch.no_grad():
        for attr, head in fit.heads.items():
            if not head.fitted:
                continue  # fewer than two classes labelled: torch's random init stays
            layer = model.heads[attr]
            weight = torch.zeros_like(layer.weight)
            bias = torch.full_like(layer.bias, UNSEEN_CLASS_BIAS + float(head.intercept.min()))
            cols = torch.from_numpy(head.columns)
            weight[cols] = torch.from_numpy(head.coef).to(weight.dtype)
            bias[cols] = torch.from_numpy(head.intercept).to(bias.dtype)
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
    log.info("heads started from a linear probe on %d images (%s)", len(train_data),
             ", ".join(f"{a}: {n}" for a, n in fit.n_train().items()))
    return fit.n_train()


def make_dataset(train_data: SplitData, schema: LabelSchema, config: TrainConfig
                 ) -> tuple[LabelledImageDataset, dict[str, dict[str, int]] | None]:
    """The training dataset (augmented, optionally flip-balanced) and the balance plan's counts."""
    transform = (apply_albumentations(train_transform(config.image_size, seed=config.seed))
                 if config.augment else eval_transform(config.image_size))
    mirror_prob = MIRROR_PROB if config.mirror_views else 0.0
    if not config.balance_orientation:
        return LabelledImageDataset(train_data, schema, transform, mirror_prob=mirror_prob,
                                    seed=config.seed), None
    dataset, plan = LabelledImageDataset.balanced(train_data, schema, transform, seed=config.seed,
                                                  mirror_prob=mirror_prob)
    log.info("orientation balance: %s -> %s", plan.before, plan.after)
    return dataset, {"before": plan.before, "after": plan.after, "added": plan.added}


def train(train_data: SplitData, val_data: SplitData, schema: LabelSchema, out_dir: str | Path,
          config: TrainConfig | None = None, *, initial_model: MultiHeadResNet | None = None,
          origin: str | None = None, semi: FixMatchTerm | None = None,
          progress: ProgressFn | None = None,
          should_cancel: CancelFn | None = None) -> TrainResult:
    """Train on ``train_data``, keep the best checkpoint by ``val_data`` loss in ``out_dir``.

    ``initial_model`` (a warm start, with ``origin`` saying where it came from) replaces the
    fresh network from :func:`fresh_model` (which refuses a silent random init); ``semi``
    (built by the caller from the unlabelled pool when ``config.semi_supervised`` asks for it)
    adds the unlabelled loss. ``progress`` receives a :class:`data.progress.Progress` after
    every step and epoch; its ``details`` are ``{phase ("step"/"epoch"), epoch, epochs,
    step, steps, train_loss, val_loss, val_acc, images_per_s, best_val_loss}`` (val fields of
    the latest finished epoch). ``should_cancel`` is polled every step; a cancelled run returns
    ``TrainResult(status="cancelled")``. The caller owns ``out_dir`` (and deletes it on failure).
    """
    config = config or TrainConfig()
    if config.epochs < 1 or config.batch_size < 1 or config.image_size < 16:
        raise UserError("epochs and batch size must be positive and image size at least 16")
    if config.semi_supervised not in SEMI_METHODS:
        raise UserError(f"unknown semi-supervised method {config.semi_supervised!r}; "
                        f"choose one of {', '.join(SEMI_METHODS)}")
    if config.head_init not in HEAD_INITS:
        raise UserError(f"unknown head init {config.head_init!r}; choose one of "
                        f"{', '.join(HEAD_INITS)}")
    if len(train_data) == 0:
        raise UserError("no labelled training images; label some first (or import labels)")
    if len(val_data) == 0:
        log.warning("no labelled validation images: keeping the last epoch's weights")
    started = time.perf_counter()
    old_threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    try:
        return _run(train_data, val_data, schema, Path(out_dir), config, initial_model, origin,
                    semi, progress, should_cancel, started)
    except TrainingCancelled:
        log.info("training cancelled")
        return TrainResult(status="cancelled", seconds=time.perf_counter() - started)
    finally:
        torch.set_num_threads(old_threads)


def _run(train_data: SplitData, val_data: SplitData, schema: LabelSchema, out_dir: Path,
         config: TrainConfig, given_model: MultiHeadResNet | None, origin: str | None,
         semi: FixMatchTerm | None, progress: ProgressFn | None, should_cancel: CancelFn | None,
         started: float) -> TrainResult:
    seed_everything(config.seed)
    device = resolve_device(config.device)
    use_bf16 = bf16_supported(device) if config.bf16 is None else bool(config.bf16)
    dataset, balance = make_dataset(train_data, schema, config)
    probed = False
    if given_model is None:
        model, weights_origin = fresh_model(schema, config)
        if config.head_init == "probe" and weights_origin.pretrained:
            probe_heads(model, train_data, schema, config.image_size,
                        mirror=model.mirror_perms is not None)
            probed = True
    else:
        model = given_model
        if hasattr(model, "set_mirror_views"):   # a warm start follows this run's setting
            model.set_mirror_views(mirror_permutations(schema) if config.mirror_views else None)
        weights_origin = getattr(model, "weights_origin", None) or WeightsOrigin(
            getattr(model, "backbone_name", config.backbone), "checkpoint",
            origin or "given model")
    origin = origin or weights_origin.sentence()
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=fmt)
    weights = None
    if config.class_weights:
        weights = {a: w.to(device) for a, w in class_weight_tensors(dataset.targets, schema).items()}
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(config.seed),
                        num_workers=config.num_workers,
                        # BatchNorm cannot train on a last batch of one image
                        drop_last=len(dataset) % config.batch_size == 1 and len(dataset) > 1)
    epochs = config.effective_epochs()
    steps = len(loader)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT_NAME
    params = config.to_dict() | {"epochs_planned": epochs, "origin": origin,
                                 "train_images": len(train_data), "train_examples": len(dataset),
                                 "val_images": len(val_data), "bf16": use_bf16,
                                 "device": str(device), "backbone": weights_origin.backbone,
                                 "weights_origin": weights_origin.to_dict()}
    meta = model_meta(schema, config.image_size, params=params, origin=origin,
                      backbone=weights_origin.backbone, weights_origin=weights_origin)
    history: list[dict[str, Any]] = []
    best_loss: float | None = None
    best_epoch: int | None = None
    best_acc: dict[str, float | None] = {}
    last_val: tuple[float | None, dict[str, float | None]] = (None, {})
    train_seconds, train_seen, since_best = 0.0, 0, 0
    log.info("training %d images (%d examples, %d val) for %d epochs at %d px; weights: %s; "
             "bf16=%s", len(train_data), len(dataset), len(val_data), epochs, config.image_size,
             origin, use_bf16)

    def report(phase: str, epoch: int, step: int, train_loss: float, images_per_s: float) -> None:
        if progress is None:
            return
        details = {"phase": phase, "epoch": epoch, "epochs": epochs, "step": step,
                   "steps": steps, "train_loss": train_loss, "val_loss": last_val[0],
                   "val_acc": last_val[1], "images_per_s": images_per_s,
                   "best_val_loss": best_loss}
        progress(Progress(((epoch - 1) * steps + step) / max(epochs * steps, 1),
                          f"epoch {epoch}/{epochs}, step {step}/{steps}", details))

    if probed and len(val_data):
        # Epoch 0 is the linear probe itself: fine-tuning has to beat it on validation loss to
        # be kept (with a few hundred labels it can distort the pretrained features instead).
        best_loss, best_acc = evaluate(model, val_data, schema, config.image_size, device=device,
                                       channels_last=config.channels_last)
        best_epoch = 0
        meta["best_epoch"] = 0
        save_checkpoint(ckpt_path, model, meta)
        last_val = (best_loss, best_acc)
        log.info("linear probe (epoch 0): val %.4f acc %s", best_loss, best_acc)

    for epoch in range(1, epochs + 1):
        def on_step(step: int, loss: float, seen: int, seconds: float, epoch: int = epoch) -> None:
            report("step", epoch, step, loss, (train_seen + seen) / (train_seconds + seconds))

        stats = train_one_epoch(model, loader, optimiser, schema.attributes, device,
                                weights=weights, use_bf16=use_bf16,
                                channels_last=config.channels_last,
                                should_cancel=should_cancel, on_step=on_step, semi=semi)
        train_seconds += stats.seconds
        train_seen += stats.images
        if len(val_data):
            val_loss, val_acc = evaluate(model, val_data, schema, config.image_size,
                                         device=device, channels_last=config.channels_last)
            improved = best_loss is None or val_loss < best_loss
        else:
            val_loss, val_acc, improved = None, {}, True
        if improved:
            best_loss, best_epoch, best_acc = val_loss, epoch, val_acc
            meta["best_epoch"] = epoch
            save_checkpoint(ckpt_path, model, meta)
            since_best = 0
        else:
            since_best += 1
        last_val = (val_loss, val_acc)
        record = {"epoch": epoch, "train_loss": stats.loss, "val_loss": val_loss,
                  "val_acc": val_acc, "seconds": stats.seconds,
                  "images_per_s": stats.images / max(stats.seconds, 1e-9), "best": improved}
        if semi is not None:
            record["pseudo_labelled_share"] = semi.epoch_stats()
        history.append(record)
        log.info("epoch %d/%d train %.4f val %s acc %s", epoch, epochs, stats.loss,
                 None if val_loss is None else round(val_loss, 4), val_acc)
        report("epoch", epoch, steps, stats.loss, train_seen / max(train_seconds, 1e-9))
        if config.patience is not None and since_best >= config.patience:
            log.info("early stop: no val improvement for %d epochs", config.patience)
            break

    seconds = time.perf_counter() - started
    images_per_s = train_seen / max(train_seconds, 1e-9)
    (out_dir / "train_log.json").write_text(json.dumps(
        {"config": config.to_dict(), "origin": origin, "history": history, "balance": balance,
         "seconds": seconds, "images_per_s": images_per_s, "bf16": use_bf16,
         "best_epoch": best_epoch}, indent=2), encoding="utf-8")
    return TrainResult(
        status="succeeded", path=str(ckpt_path), epochs_run=len(history), best_epoch=best_epoch,
        best_val_loss=best_loss, val_acc=best_acc, history=history, seconds=seconds,
        images_per_s=images_per_s, train_images=len(train_data), train_examples=len(dataset),
        val_images=len(val_data), balance=balance, origin=origin, bf16=use_bf16,
        backbone=weights_origin.backbone, weights_origin=weights_origin.to_dict())


def training_metrics(result: TrainResult) -> dict[str, Any]:
    """The ``val``/``train`` summary kept with a model (``train.n``: real labelled images)."""
    return {"val": {"loss": result.best_val_loss, "accuracy": result.val_acc,
                    "epoch": result.best_epoch, "n": result.val_images},
            "train": {"loss": result.history[-1]["train_loss"] if result.history else None,
                      "n": result.train_images, "examples": result.train_examples,
                      "seconds": result.seconds, "images_per_s": result.images_per_s}}
