"""Project commands: init, status, sample."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from data.errors import UserError
from data.sampling import SamplingError, sample_first_batch
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

    p = subparsers.add_parser("sample", help="random first batch (round 0) of unlabelled images")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=cmd_sample)


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
    if args.json:
        counts["reject_list"] = rejects
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
    with ws.store() as store:
        try:
            number, ids = sample_first_batch(store, args.n, seed=args.seed)
        except SamplingError as exc:
            raise UserError(str(exc)) from exc
    print(f"round {number}: sampled {len(ids)} images (seed {args.seed})")
    return 0
