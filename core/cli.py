"""Command-line interface: ``python -m core [--workspace DIR] COMMAND ...``.

Each command group is a module under ``core/commands`` exposing ``register(subparsers)``
(found automatically);
handlers take ``(args, workspace)`` and return an exit code. User mistakes raise one of
``USER_ERRORS`` and are printed as a single ``error: ...`` line with exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sqlite3
import sys
from typing import Sequence

from core.access import audit, cli_principal
import core.commands
from data.errors import UserError
from data.schema import SchemaError, UnknownValueError
from data.store import StoreError
from data.workspace import ENV_WORKSPACE, Workspace



def command_modules() -> list[str]:
    """Every module under core/commands (one per capability), in a stable order."""
    package = core.commands
    return sorted(f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__))


# Commands that change the project, and the action each is recorded as in the audit trail.
AUDITED: dict[str, str] = {
    "ingest": "ingest", "demo-pool": "ingest", "sample": "sample", "label-sim": "simulate",
    "train": "train", "score": "rank", "rank": "rank", "export": "export",
    "import-datumaro": "label", "cvat push": "cvat_push", "cvat pull": "cvat_pull",
    "cvat prefill": "cvat_push", "cvat forget": "cvat_pull",
}


def audit_command(args: argparse.Namespace, workspace: Workspace) -> None:
    """Record a finished project-changing command under the shell user's name."""
    name = " ".join(x for x in (args.command, getattr(args, "cvat_command", None)) if x)
    if name not in AUDITED or not workspace.exists:
        return
    details = {k: v for k, v in vars(args).items()
               if k not in ("handler", "workspace", "password", "access_token")
               and isinstance(v, (str, int, float, bool, type(None)))}
    with workspace.store() as store:
        audit(store, cli_principal(), AUDITED[name], {"event": "cli", "command": name, **details})


USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError, SchemaError, UnknownValueError, StoreError, FileNotFoundError, PermissionError,
    sqlite3.OperationalError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core",
        description="Car Grouping: active learning for vehicle color, type and orientation.")
    parser.add_argument("--workspace", "-w", default=None,
                        help=f"workspace folder (default: ${ENV_WORKSPACE} or ./workspace)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in command_modules():
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    workspace = Workspace(args.workspace)
    try:
        code = int(args.handler(args, workspace) or 0)
        if code == 0:
            audit_command(args, workspace)
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
