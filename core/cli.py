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


def check_workspace_path(workspace: Workspace) -> None:
    """A workspace path that names a file is a user mistake, said in one sentence (left alone,
    each command failed differently, some with a traceback from ``mkdir``)."""
    if workspace.root.exists() and not workspace.root.is_dir():
        raise UserError(f"the workspace {workspace.root} is a file, not a folder; give a folder "
                        f"with --workspace or ${ENV_WORKSPACE}")


# Sub-commands that work but are not for people: left out of --help and of "choose from" lists.
HIDDEN_COMMANDS = frozenset({"job-run"})


class _CommandMap(dict):
    """The sub-command table, iterated without :data:`HIDDEN_COMMANDS`.

    argparse lists ``choices`` in its "invalid choice ... (choose from ...)" error by iterating
    them; lookups (``in``, ``[]``) still find the hidden ones, so they parse and run.
    """

    def __iter__(self):  # type: ignore[override]
        return (name for name in super().__iter__() if name not in HIDDEN_COMMANDS)


def _hide_commands(subparsers: argparse._SubParsersAction) -> None:
    """Drop hidden commands' help rows. ``help=argparse.SUPPRESS`` states the intent, but
    Python 3.11's formatter prints it as "==SUPPRESS==" instead of leaving the row out."""
    subparsers._choices_actions = [a for a in subparsers._choices_actions
                                   if a.dest not in HIDDEN_COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core",
        description="Car Grouping: active learning for vehicle color, type and orientation.")
    parser.add_argument("--workspace", "-w", default=None,
                        help=f"workspace folder (default: ${ENV_WORKSPACE} or ./workspace)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    subparsers.choices = subparsers._name_parser_map = _CommandMap()
    for name in command_modules():
        importlib.import_module(name).register(subparsers)
    _hide_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    workspace = Workspace(args.workspace)
    try:
        check_workspace_path(workspace)
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
