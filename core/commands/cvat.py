"""CVAT commands: ``cvat check|push|status|pull|forget|prefill|export-round`` and
``import-datumaro PATH``."""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace

from core.commands.project import require_workspace
from data.datumaro_io import import_datumaro
from data.workspace import Workspace


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cvat", help="label in CVAT: check, push a round, status, pull labels, manual export",
        description="Connection from CVAT_HOST + CVAT_ACCESS_TOKEN (or CVAT_USERNAME/"
                    "CVAT_PASSWORD), optional CVAT_ORG/CVAT_PROJECT, or <workspace>/cvat.json "
                    "(see docs/CVAT.md).")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per HTTP request (default 30)")
    p.add_argument("--wait", type=float, default=None,
                   help="seconds to wait for CVAT background work such as exports (default 600)")
    p.add_argument("--retries", type=int, default=None,
                   help="retries of failed idempotent requests, with backoff (default 3)")
    p.add_argument("--poll", type=float, default=None,
                   help="seconds between checks of CVAT background work (default 2)")
    sub = p.add_subparsers(dest="cvat_command", metavar="ACTION", required=True)

    s = sub.add_parser("check", help="server version, user, and the project's label spec")
    s.add_argument("--project", default=None, help="CVAT project name (default from settings)")
    s.set_defaults(handler=cmd_check)

    s = sub.add_parser("push", help="create a CVAT task from a round's queued images")
    s.add_argument("--round", type=int, required=True, dest="round_number")
    s.add_argument("--prefill", action="store_true",
                   help="pre-fill tags with the current model's predictions")
    s.add_argument("--model", type=int, default=None, help="model id for --prefill")
    s.add_argument("--segment-size", type=int, default=None,
                   help="images per job (several jobs for several annotators)")
    s.add_argument("--chunk-size", type=int, default=None, help="images per data chunk")
    s.add_argument("--force", action="store_true",
                   help="push a round that already has a task (creates another task)")
    s.add_argument("--project", default=None, help="CVAT project name (default from settings)")
    s.add_argument("--include-labelled", action="store_true",
                   help="also send images of the round that already have a label")
    s.set_defaults(handler=cmd_push)

    s = sub.add_parser("status", help="job states and progress of pushed tasks")
    s.add_argument("--task", type=int, default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=cmd_status)

    s = sub.add_parser("pull", help="export pushed tasks (Datumaro 1.0) and import their tags")
    s.add_argument("--task", type=int, default=None)
    s.add_argument("--json", action="store_true")
    s.add_argument("--retract-deleted", action="store_true",
                   help="retract labels whose tag was deleted in CVAT after an earlier pull "
                        "(a new empty label version; the history keeps the old one)")
    s.set_defaults(handler=cmd_pull)

    s = sub.add_parser("forget", help="forget a pushed task (e.g. deleted in CVAT); labels stay")
    s.add_argument("--task", type=int, required=True)
    s.set_defaults(handler=cmd_forget)

    s = sub.add_parser("prefill", help="pre-label a CVAT task with an exported ONNX model "
                                       "(cvat-sdk auto-annotation; tags get source 'auto')")
    s.add_argument("--task", type=int, required=True)
    s.add_argument("--model", default=None,
                   help="exported .onnx model (default: $CARGROUP_ONNX_MODEL)")
    s.add_argument("--threshold", type=float, default=None,
                   help="leave out attributes whose probability is below this")
    s.add_argument("--clear-existing", action="store_true",
                   help="delete the task's existing annotations first")
    s.set_defaults(handler=cmd_prefill)

    s = sub.add_parser("export-round", help="zip a round for manual upload to CVAT")
    s.add_argument("--round", type=int, required=True, dest="round_number")
    s.add_argument("--out", required=True, help="zip file to write")
    s.add_argument("--include-labelled", action="store_true",
                   help="also put images of the round that already have a label in the zip")
    s.set_defaults(handler=cmd_export_round)

    p = subparsers.add_parser("import-datumaro",
                              help="import labels from a Datumaro export (.zip or default.json)")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_import_datumaro)


def _settings(args: argparse.Namespace, ws: Workspace):
    # Lazy: cvat-sdk loads only when a command needs it, so `--help` and `status` stay fast.
    from cvat_bridge.service import settings_for
    settings = settings_for(ws)
    if getattr(args, "project", None) and args.cvat_command == "check":
        settings = replace(settings, project_name=args.project)
    overrides = {}
    if args.timeout is not None:
        overrides["timeout_s"] = args.timeout
    if args.wait is not None:
        overrides["operation_timeout_s"] = args.wait
    if args.retries is not None:
        overrides["retries"] = args.retries
    if args.poll is not None:
        overrides["status_check_period_s"] = args.poll
    return settings.with_network(**overrides) if overrides else settings


def _quiet_sdk() -> None:
    """`check` prints the connection warnings itself; do not repeat them as log lines."""
    logging.getLogger("cvat_bridge.client").setLevel(logging.ERROR)


def cmd_check(args: argparse.Namespace, ws: Workspace) -> int:
    # Lazy: cvat-sdk loads only when a command needs it, so `--help` and `status` stay fast.
    from cvat_bridge import service
    require_workspace(ws)
    _quiet_sdk()
    result = service.check(ws, _settings(args, ws))
    for line in result.lines():
        print(line)
    return 1 if result.spec_differences else 0


def cmd_push(args: argparse.Namespace, ws: Workspace) -> int:
    # Lazy: cvat-sdk loads only when a command needs it, so `--help` and `status` stay fast.
    from cvat_bridge import service
    require_workspace(ws)
    res = service.push(ws, args.round_number, settings=_settings(args, ws),
                       segment_size=args.segment_size, chunk_size=args.chunk_size,
                       prefill=args.prefill, model_id=args.model, force=args.force,
                       project_name=args.project, include_labelled=args.include_labelled)
    print(res.summary())
    for job in res.jobs:
        print(f"  job #{job['id']}: frames {job['start_frame']}-{job['stop_frame']}")
    return 0


def cmd_status(args: argparse.Namespace, ws: Workspace) -> int:
    # Lazy: cvat-sdk loads only when a command needs it, so `--help` and `status` stay fast.
    from cvat_bridge import service
    require_workspace(ws)
    rows = service.status(ws, args.task, settings=_settings(args, ws))
    if args.json:
        print(json.dumps([{"task_id": r.task_id, "name": r.name, "round": r.round_number,
                           "size": r.size, "exists": r.exists, "tagged": r.tagged,
                           "progress": r.progress,
                           "jobs": [j.__dict__ for j in r.jobs]} for r in rows], indent=2))
        return 0
    if not rows:
        print("no tasks pushed from this workspace to this server yet")
    for r in rows:
        print(r.summary())
        for j in r.jobs:
            who = f", {j.assignee}" if j.assignee else ""
            print(f"  job #{j.id} frames {j.start_frame}-{j.stop_frame}: {j.state} "
                  f"({j.stage}{who}), {j.tagged}/{j.frames} tagged")
    return 0


def _print_report(report, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    print(f"{report.source}: {report.summary()}")
    for line in report.details():
        print(line)


def cmd_pull(args: argparse.Namespace, ws: Workspace) -> int:
    # Lazy: cvat-sdk loads only when a command needs it, so `--help` and `status` stay fast.
    from cvat_bridge import service
    require_workspace(ws)
    results = service.pull(ws, args.task, settings=_settings(args, ws),
                           retract_deleted=args.retract_deleted)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
        return 0
    for r in results:
        print(r.summary())
        for line in r.details():
            print(line)
    return 0


def cmd_forget(args: argparse.Namespace, ws: Workspace) -> int:
    # Lazy: cvat-sdk loads only when a command needs it, so `--help` and `status` stay fast.
    from cvat_bridge import service
    require_workspace(ws)
    rec = service.forget(ws, args.task)
    print(f"forgot task #{rec.task_id} (round {rec.round_number}, {rec.size} images) on "
          f"{rec.host}; its labels stay, and the round can be pushed again")
    return 0


def cmd_prefill(args: argparse.Namespace, ws: Workspace) -> int:
    # Lazy: cvat-sdk loads only when a command needs it, so `--help` and `status` stay fast.
    from cvat_bridge import service
    require_workspace(ws)
    tags = service.prefill(ws, args.task, model_path=args.model, conf_threshold=args.threshold,
                           clear_existing=args.clear_existing, settings=_settings(args, ws))
    print(f"task #{args.task}: pre-labelled, {tags} tag(s) now; they count as labels only "
          "after review (edited in CVAT, or their job marked completed)")
    return 0


def cmd_export_round(args: argparse.Namespace, ws: Workspace) -> int:
    # Lazy: cvat-sdk loads only when a command needs it, so `--help` and `status` stay fast.
    from cvat_bridge import service
    require_workspace(ws)
    res = service.export_round(ws, args.round_number, args.out,
                               include_labelled=args.include_labelled)
    print(res.summary())
    print("upload images/ to a CVAT task, export it as Datumaro 1.0, then run "
          "`python -m core import-datumaro EXPORT.zip` (README.md in the zip has the label spec)")
    return 0


def cmd_import_datumaro(args: argparse.Namespace, ws: Workspace) -> int:
    require_workspace(ws)
    report = import_datumaro(ws, args.path)
    _print_report(report, args.json)
    return 0

