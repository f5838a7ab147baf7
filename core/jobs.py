"""Background jobs: long work (training, scoring, ingestion, demo pools, exports) in its own process.

Why a separate process and not a thread of the Streamlit script: a training run takes minutes,
holds the GIL in places and must survive the user closing the tab or reloading the page. The app
only writes a ``jobs`` row and spawns ``python -m core job-run ID`` in a new session; the worker
runs the job and writes progress, a log of entries (epoch, losses) and the outcome back to the
store. Every tab, and every reload, reads the same row, so all of them show the same job.

Rules kept here:
- one job per *lock group* at a time (one training at a time, one pool build at a time, ...);
  a second start is refused with :class:`JobConflict`, which is a readable :class:`UserError`;
- cancellation is cooperative (the ``cancel_requested`` flag, polled by the job) with SIGTERM
  turned into the same clean path;
- a job whose worker process died without saying so (killed, machine rebooted) is marked failed
  the next time anyone looks (:func:`reap_stale`), so the lock never stays taken forever. A worker
  is named by its PID *and* its process start time: a PID the OS has since given to another
  process does not keep a dead job "running";
- work that runs in the calling process (CLI ``ingest``/``demo-pool``, the queue step after a
  training) holds its lock group through :func:`job_in_this_process`, so the app and the CLI
  refuse each other exactly as two app jobs do.
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from core.access import (JOB_ACTIONS, Principal, audit, authorize, cli_principal,
                         job_requester)
from core.cvat_config import known_secrets, redact
from data.errors import UserError
from data.optional import missing_optional
from data.progress import Progress, ProgressFn
from data.store import ProjectStore
from data.workspace import Workspace

REPO_ROOT = Path(__file__).resolve().parents[1]

ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")

# A queued job whose worker never reported in within this many seconds is considered lost.
QUEUED_GRACE_S = 60.0


@dataclass(frozen=True)
class JobKind:
    """A kind of job: where its runner lives, which lock it takes, how the UI names it."""

    runner: str          # "module:function"; imported lazily in the worker only
    group: str           # jobs in the same group never run at the same time
    title: str


JOB_KINDS: dict[str, JobKind] = {
    "demo": JobKind("core.job_runners:run_demo", "pool", "create demo pool"),
    "ingest": JobKind("core.job_runners:run_ingest", "pool", "ingest images"),
    "sample": JobKind("core.job_runners:run_sample", "pool", "sample first batch"),
    "label_sim": JobKind("core.job_runners:run_label_sim", "pool", "simulated labels"),
    "train": JobKind("core.job_runners:run_train", "model", "training"),
    "evaluate": JobKind("core.job_runners:run_evaluate", "model", "evaluation"),
    "queue": JobKind("core.job_runners:run_queue", "queue", "score pool and rank queue"),
    "refit": JobKind("core.job_runners:run_refit", "refit", "head refit and re-rank"),
    "export": JobKind("core.job_runners:run_export", "export", "export"),
    "cvat_push": JobKind("core.job_runners:run_cvat_push", "cvat", "push to CVAT"),
    "cvat_pull": JobKind("core.job_runners:run_cvat_pull", "cvat", "pull from CVAT"),
    "selftest": JobKind("core.jobs:run_selftest", "selftest", "self-test"),
}


class JobConflict(UserError):
    """Another job of the same lock group is still active."""


class JobCancelled(Exception):
    """Raised inside a worker when the user asked to cancel."""


# Popen handles of workers started by this process, so finished ones get reaped (no zombies
# that would look alive to ``os.kill(pid, 0)``).
_CHILDREN: dict[int, subprocess.Popen] = {}


# -- liveness -----------------------------------------------------------------------------------
def _reap_children() -> set[int]:
    """Collect exit statuses of our finished workers; returns their pids."""
    ended = set()
    for job_id, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            _CHILDREN.pop(job_id, None)
            ended.add(proc.pid)
    return ended


def process_start_time(pid: int) -> str | None:
    """When ``pid`` started, as the kernel counts it (``/proc/<pid>/stat`` field 22, clock ticks
    since boot); None where there is no such process or no /proc. With the pid it names one
    process for good: a reused PID comes with a later start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int | None, started: str | None = None) -> bool:
    """True while ``pid`` is a running (not zombie) process that started at ``started``
    (when given and the OS can tell)."""
    if not pid:
        return False
    if started is not None:
        now = process_start_time(pid)
        if now is not None and now != started:
            return False  # the PID now belongs to another process
    if pid in _reap_children():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie still answers kill(0); /proc tells the truth on Linux
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def reap_stale(store: ProjectStore, *, now: float | None = None) -> list[int]:
    """Mark active jobs whose worker is gone as failed; returns their ids."""
    now = time.time() if now is None else now
    reaped = []
    for job in store.jobs(active_only=True):
        pid = job["pid"]
        lost = (not pid_alive(pid, job.get("pid_started"))) if pid else (now - job["created_at"] > QUEUED_GRACE_S)
        if lost:
            store.update_job(job["id"], status="failed",
                             message=f"the worker process stopped unexpectedly (pid {pid}); "
                                     f"see jobs/{job['id']}.log in the workspace")
            reaped.append(job["id"])
    return reaped


# -- starting, reading, cancelling --------------------------------------------------------------
def active_jobs(store: ProjectStore, *, kind: str | None = None,
                group: str | None = None) -> list[dict[str, Any]]:
    """Active jobs (after reaping dead ones), optionally of one kind or lock group."""
    reap_stale(store)
    jobs = store.jobs(active_only=True)
    if kind is not None:
        jobs = [j for j in jobs if j["kind"] == kind]
    if group is not None:
        jobs = [j for j in jobs if JOB_KINDS.get(j["kind"], JobKind("", j["kind"], "")).group == group]
    return jobs


def latest_job(store: ProjectStore, kind: str | tuple[str, ...]) -> dict[str, Any] | None:
    """The most recent job of a kind (active or finished), for pages to show after a reload."""
    reap_stale(store)
    kinds = (kind,) if isinstance(kind, str) else kind
    jobs = [j for k in kinds for j in store.jobs(k)]
    return max(jobs, key=lambda j: j["id"]) if jobs else None


def log_path(ws: Workspace, job_id: int) -> Path:
    return ws.jobs_dir / f"{job_id}.log"


def start_job(ws: Workspace, kind: str, params: Mapping[str, Any] | None = None, *,
              spawn: bool = True, principal: Principal | None = None) -> int:
    """Record a job and start its worker process; returns the job id.

    Refuses (``AccessDenied``) when ``principal`` may not do what the job does (see
    :mod:`core.access`; ``None`` is the local user only while the workspace has no accounts),
    and (``JobConflict``) while another job of the same lock group is active, checked and
    recorded in one transaction so two tabs clicking at once cannot both start. ``spawn=False``
    only records the job (tests run it in-process with :func:`run_job`). Who started it goes to
    the audit trail.
    """
    if kind not in JOB_KINDS:
        raise UserError(f"unknown job kind {kind!r}; known: {', '.join(sorted(JOB_KINDS))}")
    spec = JOB_KINDS[kind]
    params = dict(params or {})
    json.dumps(params)  # fail here, not in the worker, on unserialisable params
    ws.jobs_dir.mkdir(parents=True, exist_ok=True)
    with ws.store() as store:
        who = authorize(store, principal, JOB_ACTIONS.get(kind, "train"))
        reap_stale(store)
        with store.transaction():
            for job in store.jobs(active_only=True):
                other = JOB_KINDS.get(job["kind"])
                if other is not None and other.group == spec.group:
                    raise JobConflict(
                        f"a {other.title} job (#{job['id']}) is already {job['status']}; "
                        f"wait for it to finish or cancel it first")
            job_id = store.create_job(kind, params)
            audit(store, who, JOB_ACTIONS.get(kind, kind),
                  {"event": "started", "kind": kind, "params": params}, job_id=job_id)
        if not spawn:
            return job_id
        _reap_children()
        cmd = [sys.executable, "-m", "core", "--workspace", str(ws.root), "job-run", str(job_id)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            with open(log_path(ws, job_id), "ab") as log:
                proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        except OSError as exc:
            store.update_job(job_id, status="failed", message=f"could not start worker: {exc}")
            raise UserError(f"could not start the background worker: {exc}") from exc
        _CHILDREN[job_id] = proc
        store.update_job(job_id, pid=proc.pid, pid_started=process_start_time(proc.pid))
    return job_id


def get_job(ws: Workspace, job_id: int) -> dict[str, Any]:
    with ws.store() as store:
        reap_stale(store)
        return store.job(job_id)


def cancel_job(ws: Workspace, job_id: int, *, principal: Principal | None = None) -> None:
    """Ask a job to stop. A queued job that never started is cancelled at once."""
    with ws.store() as store:
        job = store.job(job_id)
        if job["status"] not in ACTIVE:
            return
        who = authorize(store, principal, "cancel_job")
        store.request_cancel(job_id)
        audit(store, who, "cancel_job", {"kind": job["kind"]}, job_id=job_id)
        if job["status"] == "queued" and not pid_alive(job["pid"], job.get("pid_started")):
            store.update_job(job_id, status="cancelled", message="cancelled before it started")


def wait_job(ws: Workspace, job_id: int, *, timeout: float = 600.0,
             poll: float = 0.2) -> dict[str, Any]:
    """Block until the job finishes (for the CLI and tests); returns the final row."""
    deadline = time.monotonic() + timeout
    while True:
        job = get_job(ws, job_id)
        if job["status"] in FINISHED:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:.0f} s")
        time.sleep(poll)


@contextmanager
def job_in_this_process(ws: Workspace, kind: str, params: Mapping[str, Any] | None = None,
                        principal: Principal | None = None) -> Iterator["JobContext"]:
    """Run the block as a recorded job of ``kind`` in *this* process, holding its lock group.

    Raises :class:`JobConflict` (before the block runs) while another job of the group is
    active, the same check :func:`start_job` makes. The job row names this process (pid and
    start time), so the app shows it and :func:`reap_stale` frees the lock if the process dies.
    The block may fill ``ctx.result``; it is recorded when the block ends.
    """
    # Only the command line runs jobs in its own process: it acts as the shell user.
    job_id = start_job(ws, kind, params, spawn=False, principal=principal or cli_principal())
    with ws.store() as store:
        pid = os.getpid()
        store.update_job(job_id, status="running", pid=pid, pid_started=process_start_time(pid),
                         message="running")
        ctx = JobContext(store, job_id)
        try:
            yield ctx
        except (JobCancelled, KeyboardInterrupt):
            store.update_job(job_id, status="cancelled", message="cancelled")
            raise
        except BaseException as exc:
            store.update_job(job_id, status="failed", message=_readable(exc))
            raise
        store.update_job(job_id, status="succeeded", progress=1.0,
                         message=str(ctx.result.get("message", "done")), result=ctx.result)


# -- inside the worker --------------------------------------------------------------------------
class JobContext:
    """What a runner gets: progress reporting, a log, and the cancel flag.

    Progress writes are throttled (``min_interval``) so a per-batch callback does not turn into a
    per-batch database write; log entries and the final 100 % are always written.
    """

    def __init__(self, store: ProjectStore, job_id: int, *, min_interval: float = 0.5) -> None:
        self.store = store
        self.job_id = job_id
        self.min_interval = min_interval
        self._last_write = 0.0
        self._last_cancel_check = 0.0
        self._cancelled = False
        self.fraction = 0.0
        self.result: dict[str, Any] = {}   # what job_in_this_process records when the block ends

    def progress(self, fraction: float | None = None, message: str | None = None, *,
                 log: Mapping[str, Any] | None = None, force: bool = False) -> None:
        if fraction is not None:
            self.fraction = max(0.0, min(1.0, float(fraction)))
        now = time.monotonic()
        if log is None and not force and now - self._last_write < self.min_interval:
            return
        self._last_write = now
        entry = None if log is None else {"t": time.time(), **dict(log)}
        self.store.update_job(self.job_id, progress=self.fraction, message=message,
                              log_entry=entry)

    def log(self, **entry: Any) -> None:
        self.progress(None, None, log=entry)

    def cancelled(self) -> bool:
        """True once the user asked to cancel (polled at most every 0.2 s)."""
        if self._cancelled:
            return True
        now = time.monotonic()
        if now - self._last_cancel_check >= 0.2:
            self._last_cancel_check = now
            row = self.store.conn.execute("SELECT cancel_requested FROM jobs WHERE id=?",
                                          (self.job_id,)).fetchone()
            self._cancelled = bool(row and row[0])
        return self._cancelled

    def check_cancel(self) -> None:
        if self.cancelled():
            raise JobCancelled()

    def stage(self, lo: float, hi: float, label: str = "") -> ProgressFn:
        """A :data:`data.progress.ProgressFn` for another module, mapped onto [lo, hi] of this job.

        The job's message is ``label: <the stage's text>`` (e.g. ``ingesting: 12/600``).
        """
        def callback(p: Progress) -> None:
            frac = max(0.0, min(1.0, float(p.fraction)))
            text = p.text
            self.progress(lo + (hi - lo) * frac,
                          (f"{label}: {text}" if text else label) if label else (text or None))
        return callback


def _load_runner(kind: str) -> Callable[[Workspace, dict, JobContext], Mapping[str, Any] | None]:
    module_name, func = JOB_KINDS[kind].runner.split(":")
    return getattr(importlib.import_module(module_name), func)


def _readable(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, (UserError, FileNotFoundError, ValueError)):
        return text
    return f"{type(exc).__name__}: {text}"


def run_job(ws: Workspace, job_id: int) -> str:
    """Run one recorded job in this process (the worker's body); returns its final status."""
    with ws.store() as store:
        job = store.job(job_id)
        if job["status"] != "queued":
            return job["status"]
        store.update_job(job_id, status="running", pid=os.getpid(),
                         pid_started=process_start_time(os.getpid()), message="starting")
        ctx = JobContext(store, job_id)

        def on_term(signum: int, frame: object) -> None:
            raise JobCancelled()
        previous = signal.signal(signal.SIGTERM, on_term)
        try:
            if job["cancel_requested"]:
                raise JobCancelled()
            runner = _load_runner(job["kind"])
            result = runner(ws, dict(job["params"]), ctx) or {}
            ctx.check_cancel()
        except JobCancelled:
            store.update_job(job_id, status="cancelled", message="cancelled")
            _audit_outcome(store, job, "cancelled", {})
            return "cancelled"
        except Exception as exc:  # noqa: BLE001 - any failure ends the job with a readable reason
            package = missing_optional(exc)  # only a missing optional package is "not available"
            # A CVAT error could quote a credential; scrub before it reaches the store or log.
            secrets = known_secrets(ws)
            message = (f"this feature is not available in this installation (the {package} "
                       f"package is not installed)" if package else redact(_readable(exc), secrets))
            store.update_job(job_id, status="failed", message=message)
            _audit_outcome(store, job, "failed", {"message": message})
            print(redact("".join(traceback.format_exception(exc)), secrets), file=sys.stderr)
            return "failed"
        finally:
            signal.signal(signal.SIGTERM, previous)
        store.update_job(job_id, status="succeeded", progress=1.0,
                         message=str(result.get("message", "done")), result=result)
        _audit_outcome(store, job, "succeeded", {"message": str(result.get("message", "done")),
                                                 **({"model_id": result["model_id"]}
                                                    if "model_id" in result else {})})
        return "succeeded"


def _audit_outcome(store: ProjectStore, job: Mapping[str, Any], status: str,
                   details: Mapping[str, Any]) -> None:
    """Record how a job ended, under the name of whoever started it."""
    who = job_requester(store, job["id"])
    if who is not None:
        audit(store, who, JOB_ACTIONS.get(job["kind"], job["kind"]),
              {"event": status, "kind": job["kind"], **dict(details)}, job_id=job["id"])


# -- a job kind for tests of the machinery ------------------------------------------------------
def run_selftest(ws: Workspace, params: dict, ctx: JobContext) -> dict[str, Any]:
    """Count to ``steps`` with ``delay`` seconds per step; fail at ``fail_at`` if given."""
    steps = int(params.get("steps", 3))
    delay = float(params.get("delay", 0.0))
    for i in range(1, steps + 1):
        ctx.check_cancel()
        time.sleep(delay)
        if params.get("fail_at") == i:
            raise UserError(f"self-test failed at step {i} as asked")
        ctx.progress(i / steps, f"step {i}/{steps}", log={"step": i, "value": i * i})
    return {"steps": steps, "message": f"counted to {steps}"}
