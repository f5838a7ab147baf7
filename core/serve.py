"""Serving the dashboard from the CLI: check the port first, and never leave Streamlit behind.

Why a module of its own: ``python -m core app`` is a parent process around ``streamlit run``.
Two things went wrong there: a busy port or a port out of range surfaced only after "open
http://..." had been printed (or as a traceback), and ``kill PID`` of the parent left the
Streamlit child serving on the port. :func:`check_port` binds the port the way Streamlit
(tornado) will, before anything is printed; :func:`run_child` runs the server in its own process
group and stops that whole group when the parent gets SIGTERM, SIGINT or SIGHUP.
"""
from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Mapping, Sequence

from data.errors import UserError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
GRACE_S = 10.0   # how long Streamlit gets to stop after SIGTERM before SIGKILL


def check_port_number(port: int) -> None:
    """A port out of range is a user mistake, not a traceback from ``socket.bind``."""
    if not 1 <= port <= 65535:
        raise UserError(f"--port {port} is not a TCP port (use 1 to 65535, e.g. the default 8501)")


def check_port(address: str, port: int) -> None:
    """Raise :class:`UserError` (one sentence) unless ``address:port`` can be listened on now.

    The socket is bound with ``SO_REUSEADDR`` as tornado binds it, so a port left in TIME_WAIT
    by an earlier run counts as free (Streamlit will get it) while a listening one does not.
    """
    check_port_number(port)
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise UserError(f"cannot serve on {address}: no such address or host name") from None
    for family, kind, proto, _name, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
                sock.listen()
            except OSError as exc:
                raise UserError(_bind_error(address, port, exc)) from None


def _bind_error(address: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (f"port {port} on {address} is already in use (another app or an earlier "
                f"`python -m core app`?); stop it or choose another with --port")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to listen on port {port}; use a port above 1023 with --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return (f"cannot serve on {address}: it is not an address of this machine "
                "(use 127.0.0.1, 0.0.0.0 or one of this machine's addresses with --address)")
    return f"cannot listen on {address}:{port}: {exc.strerror or exc}"


def _stop_group(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the child's process group (Streamlit and anything it started)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_child(command: Sequence[str], *, cwd: str | Path,
              env: Mapping[str, str] | None = None, grace_s: float = GRACE_S) -> int:
    """Run ``command`` until it exits; forward SIGTERM/SIGINT/SIGHUP to its process group.

    Returns the child's exit status, or ``128 + signal`` when a stop signal ended the run (the
    shell's convention: 130 after Ctrl+C, 143 after ``kill``). A child that ignores SIGTERM for
    ``grace_s`` seconds is killed. Background jobs the app started are not in the group (they
    run in sessions of their own, see core.jobs) and keep running.
    """
    received: list[int] = []
    started: list[subprocess.Popen] = []

    def on_signal(signum: int, _frame: object) -> None:
        if not received and started:
            _stop_group(started[0], signal.SIGTERM)
        received.append(signum)

    # Handlers first: a signal that arrives while the child starts is not lost.
    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    try:
        proc = subprocess.Popen(list(command), cwd=str(cwd),
                                env=None if env is None else dict(env), start_new_session=True)
    except BaseException:
        for s, handler in previous.items():
            signal.signal(s, handler)
        raise
    started.append(proc)
    if received:
        _stop_group(proc, signal.SIGTERM)
    try:
        deadline: float | None = None
        while True:
            try:
                code = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            if received and deadline is None:
                deadline = time.monotonic() + grace_s
            if deadline is not None and time.monotonic() > deadline:
                _stop_group(proc, signal.SIGKILL)
        if received:
            _stop_group(proc, signal.SIGTERM)   # stragglers of the group, if any
            return 128 + received[0]
        return code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:                 # an exception above: never leave it running
            _stop_group(proc, signal.SIGKILL)
            proc.wait()
