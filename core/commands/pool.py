"""Pool commands: ingest, demo-pool, label-sim."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from core.annotator import simulate_labels
from core.cli_progress import progress_bar
from core.commands.project import require_workspace
from core.jobs import job_in_this_process
from core.labeling import batches
from data.errors import UserError
from data.evalset import EVAL_ROUND_KIND
from data.store import StoreError
from data.workspace import Workspace


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ingest", help="add images from a folder, .tar.gz/.tgz/.tar or .zip to the pool")
    p.add_argument("path", help="folder or archive of images")
    p.add_argument("--ground-truth", metavar="CSV", default=None,
                   help="labels.csv (file,color,type,orientation,source) kept hidden for label-sim")
    p.add_argument("--group-by", choices=("hash", "source"), default="hash",
                   help="split unit: each image by content hash (default), or blocks of %d "
                        "consecutive files per CSV source (keeps video frames together)" % 50)
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (none is drawn when stderr is not a terminal)")
    p.set_defaults(handler=cmd_ingest)

    p = subparsers.add_parser("demo-pool", help="generate and ingest a synthetic vehicle pool")
    p.add_argument("--n", type=int, default=1000, help="number of images (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=96, help="image side in px (default 96)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (none is drawn when stderr is not a terminal)")
    p.set_defaults(handler=cmd_demo_pool)

    p = subparsers.add_parser(
        "label-sim", help="label images from hidden ground truth (simulated annotator)")
    p.add_argument("--round", type=int, default=None,
                   help="round number to label (default: every round with unlabelled images, "
                        "the evaluation round first)")
    p.add_argument("--error-rate", type=float, default=0.0,
                   help="probability that an attribute gets a wrong class (default 0)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=cmd_label_sim)


def _print_report(report) -> None:
    print(report.summary())
    shown = report.rejects[:20]
    for path, reason in shown:
        print(f"  rejected {path}: {reason}")
    if len(report.rejects) > len(shown):
        print(f"  ... {len(report.rejects) - len(shown)} more (status --rejects)")


def cmd_ingest(args: argparse.Namespace, ws: Workspace) -> int:
    # Lazy: image decoding libraries load only when a command needs them (`--help` stays fast).
    from data.ingest import empty_source_text, ingest, load_labels_csv, rekey_to_source

    source = Path(args.path).expanduser()
    if not source.exists():
        raise UserError(f"no such file or folder: {source}")
    truth = groups = None
    exclude: list[Path] = []
    if args.ground_truth:
        csv_path = Path(args.ground_truth).expanduser()
        if not csv_path.is_file():
            raise UserError(f"no such labels file: {csv_path}")
        truth, groups = load_labels_csv(csv_path, ws.schema)
        truth = rekey_to_source(truth, csv_path.parent, source)
        groups = rekey_to_source(groups, csv_path.parent, source)
        exclude.append(csv_path)
    if args.group_by == "source":
        if not groups:
            raise UserError("--group-by source needs --ground-truth with a 'source' column")
    else:
        groups = None
    if not ws.exists:
        ws.init()
        print(f"created workspace at {ws.root}")
    update, bar = progress_bar("ingest", quiet=args.quiet)
    try:
        # The same lock group as the app's ingest/demo jobs: one pool change at a time.
        with job_in_this_process(ws, "ingest", {"path": str(source), "via": "cli"}) as job:
            report = ingest(ws, source, ground_truth=truth, group_keys=groups, progress=update,
                            workers=args.workers, exclude=exclude)
            job.result = {"message": report.summary()}
    finally:
        bar.close()
    _print_report(report)
    if not report.files:
        print(f"warning: {empty_source_text(source)}", file=sys.stderr)
    if truth and report.files and not report.ground_truth and not report.already_known:
        print("warning: no file matched a row of the labels file (paths are relative to the "
              "CSV's folder)", file=sys.stderr)
    return 0


def cmd_demo_pool(args: argparse.Namespace, ws: Workspace) -> int:
    # Lazy: image decoding libraries load only when a command needs them (`--help` stays fast).
    from data.demo import create_demo_pool

    if args.n <= 0:
        raise UserError("--n must be positive")
    if args.size < 16:
        raise UserError("--size must be at least 16 px")
    if not ws.exists:
        ws.init()
        print(f"created workspace at {ws.root}")
    update, bar = progress_bar("demo pool", quiet=args.quiet)
    try:
        with job_in_this_process(ws, "demo", {"n": args.n, "seed": args.seed, "size": args.size,
                                              "via": "cli"}) as job:
            report = create_demo_pool(ws, args.n, seed=args.seed, size=args.size,
                                      progress=update)
            job.result = {"message": report.summary()}
    finally:
        bar.close()
    _print_report(report)
    return 0


def cmd_label_sim(args: argparse.Namespace, ws: Workspace) -> int:
    require_workspace(ws)
    if not 0.0 <= args.error_rate <= 1.0:
        raise UserError("--error-rate must be between 0 and 1")
    with ws.store() as store:
        if args.round is None:
            if store.latest_round() is None:
                raise UserError("no labeling round yet; run `sample --n N` first")
            infos = [b for b in batches(store) if b.pending]
            if not infos:   # nothing open: report on the latest round, as before
                infos = [batches(store)[-1]]
            infos.sort(key=lambda b: (b.kind != EVAL_ROUND_KIND, b.number))
            chosen = [store.round(b.number) for b in infos]
        else:
            try:
                chosen = [store.round(args.round)]
            except StoreError:
                raise UserError(f"no round {args.round}") from None
        for rnd in chosen:
            items = [r["image_id"] for r in store.round_items(rnd["number"])]
            labelled = store.labelled_ids()
            todo = [i for i in items if i not in labelled]
            truth = store.ground_truth(todo)
            added = simulate_labels(store, ws.schema, todo, error_rate=args.error_rate,
                                    seed=args.seed, round_id=rnd["id"])
            missing = sum(1 for i in todo if i not in truth)
            print(f"round {rnd['number']}{' (evaluation set)' if rnd['kind'] == EVAL_ROUND_KIND else ''}"
                  f": labelled {added} of {len(items)} images with source "
                  f"simulated ({len(items) - len(todo)} were already labelled"
                  + (f", {missing} have no ground truth" if missing else "") + ")")
    return 0
