"""App commands: ``app`` (start the Streamlit dashboard), ``jobs`` and the hidden ``job-run``."""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time

from data.errors import UserError
from core.access import cli_principal
from core.users import has_accounts
from core.jobs import FINISHED, REPO_ROOT, cancel_job, reap_stale, run_job
from core.serve import check_port, check_port_number, run_child
from data.workspace import ENV_WORKSPACE, Workspace

APP_ENTRY = REPO_ROOT / "app" / "Home.py"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("app", help="open the dashboard (Streamlit, 127.0.0.1)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--address", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1: this machine only)")
    p.set_defaults(handler=cmd_app)

    p = subparsers.add_parser("jobs", help="list background jobs, or cancel one")
    p.add_argument("--cancel", type=int, default=None, metavar="ID")
    p.add_argument("--all", action="store_true", help="include finished jobs")
    p.set_defaults(handler=cmd_jobs)

    # Hidden (core.cli.HIDDEN_COMMANDS): the app starts this in a new session to run one job
    # in the background.
    p = subparsers.add_parser("job-run", help=argparse.SUPPRESS)
    p.add_argument("job_id", type=int)
    p.set_defaults(handler=cmd_job_run)


def streamlit_command(ws: Workspace, *, port: int, address: str) -> list[str]:
    """The ``streamlit run`` command line for this workspace (used by the CLI and tests)."""
    return [sys.executable, "-m", "streamlit", "run", str(APP_ENTRY),
            "--server.address", address, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            # Stated, not assumed: forms that change the project need Streamlit's XSRF token.
            "--server.enableXsrfProtection", "true", "--server.enableCORS", "true",
            "--client.toolbarMode", "minimal", "--client.showErrorDetails", "type",
            "--", "--workspace", str(ws.root)]


def is_loopback(address: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: assume others can reach it


def cmd_app(args: argparse.Namespace, ws: Workspace) -> int:
    check_port_number(args.port)
    ws.init()  # an empty workspace is fine: the Overview page offers a demo pool or ingestion
    if not is_loopback(args.address) and not has_accounts(ws):
        raise UserError(
            f"refusing to serve on {args.address} without sign-in: add accounts first with "
            f"`python -m core --workspace {ws.root} users add NAME --role maintainer` "
            "(see 'Serving the app to a team' in README.md), or keep the default 127.0.0.1")
    # A port in use is one sentence here, not Streamlit's error after "open http://...".
    check_port(args.address, args.port)
    env = dict(os.environ, **{ENV_WORKSPACE: str(ws.root)})
    print(f"workspace: {ws.root}")
    print(f"open http://{args.address}:{args.port} in a browser (Ctrl+C or `kill {os.getpid()}` "
          "stops the app)", flush=True)
    # Streamlit runs in its own process group, stopped with this process on SIGTERM/INT/HUP.
    return run_child(streamlit_command(ws, port=args.port, address=args.address),
                     cwd=REPO_ROOT, env=env)


def cmd_jobs(args: argparse.Namespace, ws: Workspace) -> int:
    if not ws.exists:
        raise UserError(f"no workspace at {ws.root}")
    if args.cancel is not None:
        cancel_job(ws, args.cancel, principal=cli_principal())
        print(f"cancel requested for job {args.cancel}")
        return 0
    with ws.store() as store:
        reap_stale(store)
        jobs = store.jobs(active_only=not args.all)
    if not jobs:
        print("no jobs" if args.all else "no active jobs")
    for j in jobs:
        age = time.time() - j["created_at"]
        print(f"#{j['id']} {j['kind']:<10} {j['status']:<10} {j['progress'] * 100:5.1f}%  "
              f"{age:7.0f}s ago  {j['message']}")
    return 0


def cmd_job_run(args: argparse.Namespace, ws: Workspace) -> int:
    status = run_job(ws, args.job_id)
    print(f"job {args.job_id}: {status}")
    return 0 if status in FINISHED and status != "failed" else 1
