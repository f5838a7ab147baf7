"""Training commands: ``train`` (then evaluate on test), ``evaluate``, and choosing the current
model: ``promote MODEL_ID`` (make any ready model current, e.g. one the promotion gate refused,
or an earlier one to roll back to) and ``rollback`` (the model current before the last change)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from tqdm import tqdm

from core.access import cli_principal
from core.cli_progress import wants_bars
from core.commands.project import require_workspace
from core.promotion import promote, rollback
from data.progress import Progress
from data.workspace import Workspace
from models import recipe


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train the three-head model on the labelled images")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--warm-epochs", type=int, default=None,
                   help="epochs for --warm-start (default: a third of --epochs)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warm-start", action="store_true",
                   help="continue from the current model's weights (a new active-learning round)")
    p.add_argument("--balance-orientation", action="store_true",
                   help="top up left/right-type orientation pairs with mirrored copies")
    p.add_argument("--class-weights", action="store_true",
                   help="inverse-frequency class weights in each head's loss")
    p.add_argument("--backbone", default="resnet18",
                   help="resnet18 (default; ImageNet weights from torchvision's cache/download or "
                        "--weights) or efficientnet_lite0 (ImageNet weights ship with it: works "
                        "offline)")
    p.add_argument("--weights", "--checkpoint", dest="weights", default=None, metavar="PATH",
                   help="local weights file for the backbone (e.g. torchvision's "
                        "resnet18-f37072fd.pth, or one of our model.pt); verified before use")
    p.add_argument("--no-pretrained", action="store_true",
                   help="train from random init on purpose (without it, missing pretrained "
                        "weights are an error, not a silent random init)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--patience", type=int, default=None,
                   help="stop after N epochs without validation improvement")
    p.add_argument("--no-bf16", action="store_true",
                   help="train in float32 even where the CPU has native bfloat16")
    p.add_argument("--semi-supervised", choices=("none", "fixmatch"), default="none",
                   help="fixmatch: also learn from unlabelled train images through confident "
                        "pseudo-labels (kept in memory, never stored as labels)")
    p.add_argument("--semi-threshold", type=float, default=0.95,
                   help="confidence a pseudo-label needs (default 0.95)")
    p.add_argument("--semi-weight", type=float, default=1.0,
                   help="weight of the unlabelled loss (lambda_u, default 1)")
    p.add_argument("--head-init", choices=("probe", "random"), default="probe",
                   help="probe (default): start a fresh pretrained model's heads from a linear "
                        "probe on its frozen features, then fine-tune (LP-FT); random: torch's "
                        "random heads")
    p.add_argument("--mirror-views", action=argparse.BooleanOptionalAction, default=None,
                   help="train on random left-right mirrors (orientation label mirrored too) and "
                        "predict the mean of each image and its mirror (one more backbone pass "
                        "at inference; default: "
                        f"{'on' if recipe.MIRROR_VIEWS else 'off'})")
    p.add_argument("--no-eval", action="store_true", help="skip the test-split evaluation")
    p.add_argument("--force-promote", action="store_true",
                   help="make the new model current even if it is worse than the current one "
                        "on the evaluation set (without it, a worse model is recorded but the "
                        "current model stays current)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_train)

    p = subparsers.add_parser("promote", help="make a recorded model current (audited)")
    p.add_argument("model_id", type=int, help="the model to make current (see `status`)")
    p.set_defaults(handler=cmd_promote)

    p = subparsers.add_parser("rollback",
                              help="make the model that was current before the last change "
                                   "current again (audited)")
    p.set_defaults(handler=cmd_rollback)

    p = subparsers.add_parser("evaluate", help="per-head test metrics of a model")
    p.add_argument("--model", type=int, default=None, help="model id (default: current)")
    p.add_argument("--split", choices=("test", "val", "train"), default="test")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(handler=cmd_evaluate)


class _Bar:
    """tqdm over all steps of the run, fed by train()'s progress callback."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __call__(self, progress: Progress) -> None:
        info = progress.details
        total = info["epochs"] * info["steps"]
        if self.bar is None:
            self.bar = tqdm(total=total, unit="step", desc="train", dynamic_ncols=True,
                            file=sys.stderr)
        done = (info["epoch"] - 1) * info["steps"] + info["step"]
        self.bar.update(done - self.bar.n)
        post = {"ep": f"{info['epoch']}/{info['epochs']}", "loss": f"{info['train_loss']:.3f}",
                "img/s": f"{info['images_per_s']:.0f}"}
        if info["val_loss"] is not None:
            post["val"] = f"{info['val_loss']:.3f}"
        self.bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_train(args: argparse.Namespace, ws: Workspace) -> int:
    require_workspace(ws)
    # Lazy: torch loads only when a command needs it, so `--help` and `status` stay fast.
    from core.training import train_and_promote
    from models.backbones import weights_status
    from models.evaluate import format_report
    from models.train import TrainConfig

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    config = TrainConfig(
        epochs=args.epochs, warm_epochs=args.warm_epochs, image_size=args.image_size,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warm_start=args.warm_start, balance_orientation=args.balance_orientation,
        class_weights=args.class_weights, pretrained=not args.no_pretrained,
        backbone=args.backbone, weights=args.weights, seed=args.seed, num_threads=args.threads,
        patience=args.patience, bf16=False if args.no_bf16 else None,
        semi_supervised=args.semi_supervised, semi_threshold=args.semi_threshold,
        semi_weight=args.semi_weight, head_init=args.head_init,
        mirror_views=recipe.MIRROR_VIEWS if args.mirror_views is None else args.mirror_views)
    if args.warm_start:
        before = "warm start from the current model's weights (if there is one)"
    else:
        before = weights_status(args.backbone, args.weights,
                                pretrained=not args.no_pretrained).sentence()
    # With --json, stdout carries only the JSON document; the origin lines go to stderr.
    say = sys.stderr if args.json else sys.stdout
    print(f"weights before training: {before}", file=say, flush=True)
    bar = _Bar()
    try:   # a bar only on a terminal (core.cli_progress): never mixed into piped output
        outcome = train_and_promote(ws, config,
                                    progress=bar if wants_bars() and not args.json else None,
                                    evaluate_test=not args.no_eval,
                                    force_promote=args.force_promote)
    finally:
        bar.close()
    if outcome.model_id is not None:
        print(f"weights after training: model {outcome.model_id} started from "
              f"{outcome.train.origin}", file=say, flush=True)
    if outcome.decision is not None:
        print(f"promotion: {outcome.decision.reason}", file=say, flush=True)
        if outcome.refused:
            print(f"model {outcome.model_id} is kept (ready, not current); to use it anyway: "
                  f"python -m core promote {outcome.model_id}", file=say, flush=True)
    if args.json:
        print(json.dumps(outcome.to_dict(), indent=2))
        return 1 if outcome.cancelled else 0  # refused: recorded, not current ("status": "refused")
    if outcome.cancelled:
        print("training cancelled; nothing recorded, the previous model stays current")
        return 1
    result, report = outcome.train, outcome.evaluation
    if outcome.evaluation_skipped and not args.no_eval:
        print(f"(no test evaluation: {outcome.evaluation_skipped})")
    if result.balance:
        print(f"orientation before balancing: {result.balance['before']}")
        print(f"orientation after balancing:  {result.balance['after']}")
    val = ", ".join(f"{a} {v:.3f}" for a, v in result.val_acc.items() if v is not None)
    state = "now current" if outcome.promoted else "NOT current"
    print(f"model {outcome.model_id} ({state}): {result.epochs_run} epochs in {result.seconds:.1f} s "
          f"({result.images_per_s:.1f} img/s, {result.train_images} train images, "
          f"weights: {result.origin}{', bf16' if result.bf16 else ''})")
    if result.best_epoch is not None:
        loss = "n/a" if result.best_val_loss is None else f"{result.best_val_loss:.4f}"
        print(f"best epoch {result.best_epoch}: val loss {loss}; val accuracy: {val or 'n/a'}")
    if report is not None:
        print(format_report(report))
    return 0


def cmd_evaluate(args: argparse.Namespace, ws: Workspace) -> int:
    require_workspace(ws)
    # Lazy: torch loads only when a command needs it, so `--help` and `status` stay fast.
    from core.training import evaluate_and_record
    from models.evaluate import format_report
    report = evaluate_and_record(ws, args.model, args.split)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0


def cmd_promote(args: argparse.Namespace, ws: Workspace) -> int:
    require_workspace(ws)
    before = promote(ws, args.model_id, principal=cli_principal(), note="command line")
    print(f"model {args.model_id} is now current" + (f" (was model {before})" if before else ""))
    return 0


def cmd_rollback(args: argparse.Namespace, ws: Workspace) -> int:
    require_workspace(ws)
    target = rollback(ws, principal=cli_principal())
    print(f"rolled back: model {target} is current again")
    return 0
