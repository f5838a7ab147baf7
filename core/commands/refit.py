"""``refit``: the fast loop by hand: refit the heads on cached embeddings and re-rank open batches."""
from __future__ import annotations

import argparse
import json

from core.commands.project import require_workspace
from core.refit_status import RERANK_STRATEGIES
from data.workspace import Workspace


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "refit", help="refit the heads on cached embeddings and re-rank the open batches "
                      "(seconds; the app does this after every few saved labels)")
    p.add_argument("--backbone", default=None,
                   help="backbone whose cached pool embeddings to use (default: the default one)")
    p.add_argument("--balanced", action="store_true",
                   help="weight classes inversely to their label counts")
    p.add_argument("--strategy", default="entropy", choices=list(RERANK_STRATEGIES),
                   help="uncertainty for batches whose own strategy has none (default entropy)")
    p.add_argument("--no-mirror", action="store_true",
                   help="plain views only: do not fit and predict on left-right mirrored "
                        "embeddings too (they are computed once, beside the plain ones)")
    p.add_argument("--no-rerank", action="store_true", help="refit and save scores only")
    p.add_argument("--json", action="store_true", help="print the refit record as JSON")
    p.set_defaults(handler=cmd_refit)


def cmd_refit(args: argparse.Namespace, ws: Workspace) -> int:
    require_workspace(ws)
    # Lazy: torch and sklearn load only when a command needs them, so `--help` stays fast.
    from core.refit import refit_and_rerank

    record = refit_and_rerank(ws, backbone=args.backbone,
                              class_weight="balanced" if args.balanced else None,
                              strategy=args.strategy, rerank=not args.no_rerank,
                              mirror=not args.no_mirror)
    if args.json:
        print(json.dumps(record.to_dict(), indent=2))
        return 0
    t = record.timings
    views = "plain and mirrored views" if record.mirror else "plain views only"
    print(f"heads refitted on {record.train_labels} train labels, {views} ({record.origin}); "
          f"{record.pool} pool images predicted; fit+predict+re-rank {t['refit_to_rerank_s']:.2f} s "
          f"(embeddings {t['embeddings_s']:.1f} s)")
    for number, n in record.reranked.items():
        print(f"  round {number}: {n} unlabelled images re-ranked by {record.strategies[number]}")
    if record.val_accuracy:
        print("  val accuracy: " + ", ".join(f"{a} {v:.0%}" for a, v in record.val_accuracy.items()))
    for note in record.warnings:
        print(f"  note: {note}")
    return 0
