"""Active-learning commands: ``score`` the pool, ``rank`` the next batch, run a whole ``round``."""
from __future__ import annotations

import argparse
import json
import logging
from typing import Any, Callable

from core.acquisition import SAMPLING, STRATEGIES, parse_weights
from core.cli_progress import progress_bar
from core.commands.project import require_workspace
from core.diversity import METHODS as DIVERSITY_METHODS
from data.errors import UserError
from data.progress import ProgressFn
from data.workspace import Workspace


def _queue_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", "-s", default="entropy", choices=list(STRATEGIES),
                   help="acquisition strategy (default: entropy; `rank --list` describes them)")
    p.add_argument("--top", "-k", type=int, default=200, help="batch size (default 200)")
    p.add_argument("--weights", default=None,
                   help="per-attribute weights, e.g. color=1,type=1,orientation=2")
    p.add_argument("--diversity", nargs="?", const="kcenter", default=None,
                   choices=list(DIVERSITY_METHODS),
                   help="spread the batch over embedding space (kcenter, default; or kmeans)")
    p.add_argument("--pool-factor", type=float, default=4.0,
                   help="with --diversity: pre-select this many times --top most uncertain")
    p.add_argument("--balance", action="store_true",
                   help="favour images predicted to be in classes rare among current labels")
    p.add_argument("--sampling", choices=list(SAMPLING), default=None,
                   help="draw the batch by top-k (default) or stochastically: power (p ∝ s^beta), "
                        "softmax or softrank (Kirsch et al. 2023); auto uses power")
    p.add_argument("--beta", type=float, default=1.0, help="with --sampling: sharpness (default 1)")
    p.add_argument("--backbone", default=None,
                   help="pretrained backbone for typiclust/probcover/auto embeddings "
                        "(default: efficientnet_lite0 if installed, else resnet18)")
    p.add_argument("--seed", type=int, default=0)


def _score_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("auto", "onnx", "torch"), default="auto",
                   help="auto: the model's ONNX export (int8 first) if published, else PyTorch")
    p.add_argument("--no-int8", action="store_true", help="prefer the fp32 ONNX export")
    p.add_argument("--mc-passes", type=int, default=10,
                   help="MC-dropout passes of the heads for BALD (0: no BALD)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for inference")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("score", help="score every unlabelled image with the current model")
    p.add_argument("--model", type=int, default=None, help="model id (default: current)")
    _score_options(p)
    p.set_defaults(handler=cmd_score)

    p = subparsers.add_parser("rank", help="rank the next batch to label and record it as a round")
    _queue_options(p)
    p.add_argument("--rescore", action="store_true", help="score the pool again first")
    p.add_argument("--preview", action="store_true", help="show the batch without recording it")
    p.add_argument("--show", type=int, default=20, help="rows to print (default 20)")
    p.add_argument("--json", action="store_true", help="print the batch as JSON")
    p.add_argument("--list", action="store_true", help="list the strategies and exit")
    p.set_defaults(handler=cmd_rank)

    p = subparsers.add_parser(
        "round", help="one active-learning round: import labels, train, evaluate, score, queue")
    p.add_argument("--labels", default=None,
                   help="labels file to import first (Datumaro .zip/.json or labels CSV)")
    p.add_argument("--simulate", action="store_true",
                   help="label pending queued images from hidden ground truth (demo pools)")
    p.add_argument("--error-rate", type=float, default=0.0, help="with --simulate")
    _queue_options(p)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--warm-epochs", type=int, default=None)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--train-batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-warm-start", action="store_true", help="train from scratch")
    p.add_argument("--no-pretrained", action="store_true",
                   help="a first model from random init on purpose (otherwise missing pretrained "
                        "weights are an error)")
    p.add_argument("--backbone-weights", default=None, metavar="PATH",
                   help="local weights file for --backbone's first model (as `train --weights`; "
                        "--weights here are the acquisition's per-attribute weights)")
    p.add_argument("--force-promote", action="store_true",
                   help="make the new model current even if it is worse on the evaluation set")
    p.add_argument("--json", action="store_true", help="print the round record as JSON")
    p.set_defaults(handler=cmd_round)
    # In `round`, --backbone also picks the backbone of a first model (later rounds warm-start
    # from the current model and keep its backbone); `train`'s default applies when omitted.
    for action in p._actions:
        if action.dest == "backbone":
            action.help = ("backbone of a first model (resnet18 default, or efficientnet_lite0: "
                           "ImageNet weights ship with it) and of typiclust/probcover/auto "
                           "embeddings; later rounds keep the current model's backbone")


def _weights(text: str | None) -> dict[str, float] | None:
    try:
        return parse_weights(text)
    except ValueError as exc:
        raise UserError(f"--weights: {exc}") from None


def _bar(desc: str) -> tuple[ProgressFn | None, Callable[[], None]]:
    """A terminal progress bar (none when stderr is not a terminal) and its closer."""
    update, bar = progress_bar(desc)
    return update, bar.close


def cmd_score(args: argparse.Namespace, ws: Workspace) -> int:
    require_workspace(ws)
    # Lazy: torch loads only when a command needs it, so `--help` and `status` stay fast.
    from core.scoring import ScoringError, score_pool

    update, close = _bar("score")
    try:
        pool = score_pool(ws, args.model, backend=args.backend, prefer_int8=not args.no_int8,
                          mc_passes=args.mc_passes, batch_size=args.batch_size,
                          threads=args.threads, progress=update)
    except ScoringError as exc:
        raise UserError(str(exc)) from None
    finally:
        close()
    t = pool.timings
    print(f"scored {len(pool)} images with model {pool.model_id} via {pool.backend} in "
          f"{t['total_s']:.1f} s (model {t['model_s']:.1f} s, MC-dropout {t['mc_dropout_s']:.1f} s, "
          f"saving {t['save_s']:.1f} s)")
    return 0


def _print_items(items: list[Any], show: int) -> None:
    for it in items[:show]:
        preds = "  ".join(f"{a}={v}({p:.2f})" for a, (v, p) in it.predictions.items())
        score = "" if it.score != it.score else f"score={it.score:.3f}  "   # NaN: pick order only
        print(f"{it.rank + 1:>4}. {it.name:<28} {score}{preds}")
    if len(items) > show:
        print(f"      ... {len(items) - show} more")


def cmd_rank(args: argparse.Namespace, ws: Workspace) -> int:
    if args.list:
        for s in STRATEGIES.values():
            print(f"{s.name:<18} {s.description}")
        print("options: --diversity [kcenter|kmeans], --sampling topk|power|softmax|softrank, "
              "--beta B, --balance, --weights attr=w,..., --backbone NAME")
        return 0
    require_workspace(ws)
    # Lazy: torch loads only when a command needs it, so `--help` and `status` stay fast.
    from core.queue import build_queue

    update, close = _bar("rank")
    try:
        res = build_queue(ws, args.strategy, args.top, weights=_weights(args.weights),
                          diversity=args.diversity, balance=args.balance,
                          pool_factor=args.pool_factor, sampling=args.sampling, beta=args.beta,
                          backbone=args.backbone, seed=args.seed,
                          record=not args.preview, rescore=args.rescore, progress=update)
    finally:
        close()
    if args.json:
        print(json.dumps({"round": res.round_number, "strategy": res.strategy,
                          "reason": res.reason, "notes": res.notes,
                          "params": res.params, "model_id": res.model_id,
                          "items": [it.to_dict() for it in res.items]}, indent=2))
        return 0
    where = (f"recorded as round {res.round_number}" if res.round_number is not None
             else "preview, not recorded")
    p = res.params
    extras = [x for x in (p.get("auto", {}).get("chose"), p.get("diversity"),
                          p.get("sampling") if p.get("sampling") not in (None, "topk") else None,
                          "balance" if p.get("balance") else None) if x]
    print(f"{len(res.items)} of {res.candidates} candidates by {res.strategy}"
          f"{' + ' + ' + '.join(extras) if extras else ''} ({where}; {res.timings['total_s']:.1f} s)")
    if res.reason:
        print(f"auto: {res.reason}")
    emb = p.get("embeddings")
    if emb:
        print(f"embeddings: {emb['backbone']} ({emb['origin_detail']}); "
              f"{emb['embedded_now']} images embedded now")
    for note in res.notes:
        print(f"note: {note}")
    _print_items(res.items, args.show)
    return 0


def cmd_round(args: argparse.Namespace, ws: Workspace) -> int:
    require_workspace(ws)
    # Lazy: torch loads only when a command needs it, so `--help` and `status` stay fast.
    from core.loop import run_round
    from models.backbones import DEFAULT_BACKBONE, check_name
    from models.train import TrainConfig

    if args.backbone is not None:
        check_name(args.backbone)   # a UserError naming the choices

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    config = TrainConfig(epochs=args.epochs, warm_epochs=args.warm_epochs,
                         image_size=args.image_size, batch_size=args.train_batch_size,
                         num_threads=args.threads, pretrained=not args.no_pretrained,
                         backbone=args.backbone or DEFAULT_BACKBONE,
                         weights=args.backbone_weights, seed=args.seed)
    update, close = _bar("round")
    try:
        rep = run_round(ws, labels=args.labels, simulate=args.simulate,
                        error_rate=args.error_rate, strategy=args.strategy, top_k=args.top,
                        weights=_weights(args.weights), diversity=args.diversity,
                        balance=args.balance, sampling=args.sampling, beta=args.beta,
                        backbone=args.backbone, train_config=config,
                        warm_start=False if args.no_warm_start else None, seed=args.seed,
                        progress=update, force_promote=args.force_promote)
    finally:
        close()
    if rep.status != "succeeded":
        if rep.model_id is not None:  # cancelled while scoring: training had already promoted
            print(f"round {rep.status}; model {rep.model_id} is current, no round was recorded")
        else:
            print(f"round {rep.status}; nothing recorded, the previous model stays current")
        return 1
    if args.json:
        print(json.dumps({"round": rep.round_number, **rep.record}, indent=2))
        return 0
    rec = rep.record
    test = rec["metrics"].get("test", {})
    accs = test.get("accuracy") or {}
    acc_txt = "  ".join(f"{a}={v:.3f}" for a, v in accs.items() if v is not None) or \
        test.get("skipped", "no test labels")
    print(f"round {rep.round_number}: model {rep.model_id} trained on "
          f"{rec['train']['train_images']} images "
          f"({'warm start from ' + str(rec['warm_started_from']) if rec['warm_started_from'] else 'from scratch'})")
    model = rec.get("model") or {}
    if model:
        print(f"backbone: {model.get('backbone')}; weights: {model.get('origin')}")
    print(f"test accuracy: {acc_txt}")
    promotion = rec.get("promotion") or {}
    if promotion.get("reason"):
        print(f"promotion: {promotion['reason']}")
    if promotion and not promotion.get("promote"):
        print(f"the batch was ranked by model {rec['ranked_by']}, which stays current; "
              f"to use model {rep.model_id} anyway: python -m core promote {rep.model_id}")
    print(f"queued {rec['queued']} images by {rec['strategy']}; timings: "
          + ", ".join(f"{k}={v:.1f}" for k, v in rec["timings"].items()))
    if rep.queue is not None:
        _print_items(rep.queue.items, 10)
    return 0
