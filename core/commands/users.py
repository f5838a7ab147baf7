"""Team commands: ``users add|list|disable|enable|passwd|role`` and ``audit``.

Passwords are read from a prompt (no echo) or, with ``--password-stdin``, from the first line of
standard input; never from the command line, where other users could read them in ``ps``.
"""
from __future__ import annotations

import argparse
import getpass
import json
import sys
import time

from core import users
from core.access import cli_principal
from data import accounts
from data.accounts import ROLES
from data.errors import UserError
from data.workspace import Workspace


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("users", help="team accounts for serving the app (sign-in, roles)")
    sub = p.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    a = sub.add_parser("add", help="add an account (asks for the password)")
    a.add_argument("name")
    a.add_argument("--role", choices=ROLES, default="annotator")
    a.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of standard input")
    a.set_defaults(handler=cmd_add)
    a = sub.add_parser("list", help="list accounts and roles")
    a.set_defaults(handler=cmd_list)
    for name, flag in (("disable", True), ("enable", False)):
        a = sub.add_parser(name, help=f"{name} an account")
        a.add_argument("name")
        a.set_defaults(handler=cmd_disable, disabled=flag)
    a = sub.add_parser("passwd", help="set a new password (asks for it)")
    a.add_argument("name")
    a.add_argument("--password-stdin", action="store_true")
    a.set_defaults(handler=cmd_passwd)
    a = sub.add_parser("role", help="change an account's role")
    a.add_argument("name")
    a.add_argument("role", choices=ROLES)
    a.set_defaults(handler=cmd_role)

    p = subparsers.add_parser("audit", help="who did what, newest first")
    p.add_argument("--user", default=None, help="only this person")
    p.add_argument("--action", default=None)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_audit)


def read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise UserError("no terminal to ask for the password; pipe it with --password-stdin")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise UserError("the two passwords differ")
    return first


def _need_workspace(ws: Workspace) -> None:
    if not ws.exists:
        raise UserError(f"no workspace at {ws.root}; run `python -m core init` first")


def cmd_add(args: argparse.Namespace, ws: Workspace) -> int:
    _need_workspace(ws)
    acc = users.add_user(ws, args.name, args.role, read_password(args), principal=cli_principal())
    print(f"added {acc.name} ({acc.role})")
    return 0


def cmd_list(args: argparse.Namespace, ws: Workspace) -> int:
    _need_workspace(ws)
    rows = users.list_users(ws, principal=cli_principal())
    if not rows:
        print("no accounts (the app runs in single-user mode on 127.0.0.1)")
    for acc in rows:
        print(f"{acc.name:<24} {acc.role:<11} {'disabled' if acc.disabled else 'active'}")
    return 0


def cmd_disable(args: argparse.Namespace, ws: Workspace) -> int:
    _need_workspace(ws)
    users.set_disabled(ws, args.name, args.disabled, principal=cli_principal())
    print(f"{args.name} {'disabled' if args.disabled else 'enabled'}")
    return 0


def cmd_passwd(args: argparse.Namespace, ws: Workspace) -> int:
    _need_workspace(ws)
    users.set_password(ws, args.name, read_password(args), principal=cli_principal())
    print(f"password of {args.name} changed")
    return 0


def cmd_role(args: argparse.Namespace, ws: Workspace) -> int:
    _need_workspace(ws)
    users.set_role(ws, args.name, args.role, principal=cli_principal())
    print(f"{args.name} is now {args.role}")
    return 0


def cmd_audit(args: argparse.Namespace, ws: Workspace) -> int:
    _need_workspace(ws)
    with ws.store() as store:
        rows = accounts.audit_entries(store, user=args.user, action=args.action, limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no audit entries" + (f" for {args.user}" if args.user else ""))
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["at"]))
        job = f" job #{r['job_id']}" if r["job_id"] else ""
        details = ", ".join(f"{k}={v}" for k, v in r["details"].items() if k != "params")
        print(f"{when}  {r['user']:<16} {r['action']:<14}{job}  {details}")
    return 0
