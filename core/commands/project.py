"""Project commands: init, status, sample, eval-set."""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

from core.evalset import eval_set_status, short_sample_text, start_labelling, status_line
from data.errors import UserError
from core.rounds import draw_eval_set
from data.evalset import DEFAULT_PER_CLASS, EvalSetError
from data.sampling import SamplingError
from data.schema import load_schema
from data.workspace import Workspace, WorkspaceConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("init", help="create a workspace")
    p.add_argument("--cache-size", type=int, default=128,
                   help="side in px of the preprocessed image cache (training resolution)")
    p.add_argument("--schema", default=None, help="JSON file with the project's own class lists")
    p.add_argument("--optional-aliases", action="store_true",
                   help="also map near colours (silver->gray, beige->brown, gold->yellow)")
    p.set_defaults(handler=cmd_init)

    p = subparsers.add_parser("status", help="counts by split, label source, round; rejects")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--rejects", action="store_true", help="list every rejected file")
    p.set_defaults(handler=cmd_status)

    p = subparsers.add_parser(
        "sample", help="the evaluation set (first time), then a random first batch to label")
    p.add_argument("--n", type=int, default=1000, help="images in the random first batch")
    p.add_argument("--eval-per-class", type=int, default=DEFAULT_PER_CLASS,
                   help="evaluation-set size per class, drawn from the test split and labelled "
                        f"first, when the project has none yet (default {DEFAULT_PER_CLASS}; "
                        "0: no evaluation set)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=cmd_sample)

    p = subparsers.add_parser(
        "eval-set", help="show the evaluation set (labelled/total per head, size warnings); "
                         "--per-class N draws or grows it")
    p.add_argument("--per-class", type=int, default=None,
                   help="size: N x the largest number of classes of any head (30 x 10 colours = "
                        "300 on the default schema); the set only grows, never shrinks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(handler=cmd_eval_set)


def require_workspace(ws: Workspace) -> None:
    if not ws.exists:
        raise UserError(f"no workspace at {ws.root}; run `python -m core --workspace {ws.root} init`"
                        " or `demo-pool` first")


def cmd_init(args: argparse.Namespace, ws: Workspace) -> int:
    if ws.exists:
        print(f"workspace already exists at {ws.root}")
        return 0
    if args.cache_size < 16:
        raise UserError("--cache-size must be at least 16 px")
    schema_file = None
    if args.schema:
        schema_path = Path(args.schema).expanduser()
        load_schema(schema_path)  # validate before anything is written
        # the project keeps its own copy: the workspace stays self-contained and movable
        ws.root.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(schema_path, ws.root / "schema.json")
        schema_file = "schema.json"
    cfg = WorkspaceConfig(cache_size=args.cache_size, schema_file=schema_file,
                          optional_aliases=args.optional_aliases)
    ws.init(cfg)
    print(f"created workspace at {ws.root}")
    return 0


def cmd_status(args: argparse.Namespace, ws: Workspace) -> int:
    require_workspace(ws)
    with ws.store() as store:
        counts = store.status_counts()
        rejects = store.rejects()
        evaluation = eval_set_status(store, ws.schema)
    if args.json:
        counts["reject_list"] = rejects
        counts["eval_set"] = {"members": evaluation.members, "labelled": evaluation.labelled,
                              "warnings": evaluation.warnings}
        print(json.dumps(counts, indent=2))
        return 0
    print(f"workspace: {ws.root}")
    print(f"images: {counts['images']}  labelled: {counts['labelled']}  "
          f"unlabelled: {counts['unlabelled']}  rejected: {counts['rejects']}")
    print("split:    " + "  ".join(f"{s}={n}" for s, n in counts["by_split"].items()))
    print("labelled: " + "  ".join(f"{s}={n}" for s, n in counts["labelled_by_split"].items()))
    if counts["labelled_by_source"]:
        print("source:   " + "  ".join(f"{s}={n}" for s, n in counts["labelled_by_source"].items()))
    if counts["labelled_by_attribute"]:
        print("attribute: " + "  ".join(f"{a}={n}" for a, n in counts["labelled_by_attribute"].items()))
    for r in counts["rounds"]:
        print(f"round {r['number']}: {r['kind']} ({r['strategy']}), {r['size']} images")
    print(f"models: {counts['models']}")
    if evaluation.exists:
        print(status_line(evaluation))
    if rejects:
        shown = rejects if args.rejects else rejects[:10]
        print("rejects:")
        for r in shown:
            print(f"  {r['path']}: {r['reason']}")
        if len(shown) < len(rejects):
            print(f"  ... {len(rejects) - len(shown)} more (status --rejects)")
    return 0


def cmd_sample(args: argparse.Namespace, ws: Workspace) -> int:
    require_workspace(ws)
    if args.eval_per_class < 0:
        raise UserError("--eval-per-class must be 0 or more")
    with ws.store() as store:
        try:
            result = start_labelling(store, ws.schema, args.n, eval_per_class=args.eval_per_class,
                                     seed=args.seed)
        except (SamplingError, EvalSetError) as exc:
            raise UserError(str(exc)) from exc
        status = eval_set_status(store, ws.schema)
    if result.eval_draw is not None:
        _print_draw(result.eval_draw)
    print(f"round {result.seed_round}: sampled {len(result.seed_ids)} images (seed {args.seed})")
    if len(result.seed_ids) < args.n:
        print(f"warning: {short_sample_text(args.n, len(result.seed_ids))}", file=sys.stderr)
    for warning in status.warnings:
        print(f"warning: {warning}")
    return 0


def _print_draw(draw) -> None:
    where = (f"round {draw.round_number}: evaluation set of {len(draw.queued)} images to label "
             "first" if draw.round_number is not None else "evaluation set")
    print(f"{where} ({draw.size} members; target {draw.target} = {draw.per_class} per class x "
          f"the largest head; {draw.available} test-split images in the pool)")


def cmd_eval_set(args: argparse.Namespace, ws: Workspace) -> int:
    require_workspace(ws)
    with ws.store() as store:
        if args.per_class is not None:
            try:
                draw = draw_eval_set(store, ws.schema, args.per_class, seed=args.seed)
            except EvalSetError as exc:
                raise UserError(str(exc)) from exc
            if not args.json:
                if draw.added:
                    _print_draw(draw)
                else:
                    print(f"the evaluation set already has {draw.size} images (target "
                          f"{draw.target}); it never shrinks")
        status = eval_set_status(store, ws.schema)
    if args.json:
        print(json.dumps(dataclasses.asdict(status), indent=2))
        return 0
    print("\n".join(status.lines()))
    return 0
