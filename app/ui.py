"""Shared helpers for the dashboard pages: workspace, store access, readable errors, job panels.

Pages only draw and call ``core``/``models``/``cvat_bridge``; this module holds the drawing
patterns they share so every page shows progress and errors the same way.
"""
from __future__ import annotations

import functools
import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import streamlit as st
from PIL import Image, ImageDraw

APP_DIR = Path(__file__).resolve().parent
REPO_ROOT = APP_DIR.parent
if str(REPO_ROOT) not in sys.path:  # `streamlit run app/Home.py` puts app/ first, not the repo
    sys.path.insert(0, str(REPO_ROOT))

from data.accounts import has_accounts  # noqa: E402
from data.errors import UserError  # noqa: E402
from data.optional import missing_optional  # noqa: E402
from core.access import ACTIONS, JOB_ACTIONS, LOCAL, AccessDenied, Principal, allowed  # noqa: E402
from core.jobs import (ACTIVE, JOB_KINDS, JobConflict, active_jobs, cancel_job, latest_job,  # noqa: E402
                       reap_stale, start_job)
from data.schema import SchemaError, UnknownValueError  # noqa: E402
from data.store import ProjectStore, StoreError  # noqa: E402
from data.workspace import Workspace  # noqa: E402

log = logging.getLogger("cargroup.app")

READABLE_ERRORS: tuple[type[BaseException], ...] = (
    UserError, SchemaError, UnknownValueError, StoreError, FileNotFoundError, PermissionError,
    ValueError)

PAGES: list[tuple[str, str, str]] = [
    # (file relative to app/, title, icon)
    ("views/0_Overview.py", "Overview", ":material/dashboard:"),
    ("views/1_Label.py", "Label", ":material/label:"),
    ("views/2_Balance.py", "Balance", ":material/balance:"),
    ("views/3_CVAT.py", "CVAT", ":material/cloud_sync:"),
    ("views/4_Train.py", "Train", ":material/model_training:"),
    ("views/5_Evaluate.py", "Evaluate", ":material/analytics:"),
    ("views/6_Queue.py", "Queue", ":material/format_list_numbered:"),
    ("views/7_Export.py", "Export", ":material/deployed_code:"),
    ("views/8_Review.py", "Review", ":material/rate_review:"),
]


# -- workspace and store -------------------------------------------------------------------------
def workspace_arg(argv: Sequence[str]) -> str | None:
    """``--workspace DIR`` (or ``--workspace=DIR``) from the script arguments after ``--``."""
    for i, arg in enumerate(argv):
        if arg in ("--workspace", "-w") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--workspace="):
            return arg.split("=", 1)[1]
    return None


def workspace() -> Workspace:
    """The app's workspace: ``-- --workspace DIR``, else ``$CARGROUP_WORKSPACE``, else ./workspace.

    Created on first use so an empty workspace opens on the onboarding page, not an error.
    """
    root = workspace_arg(sys.argv[1:])
    ws = Workspace(root)  # None -> $CARGROUP_WORKSPACE or ./workspace
    if not ws.exists:
        ws.init()
    return ws


@contextmanager
def store() -> Iterator[ProjectStore]:
    """A store connection for one script run (connections are cheap; runs are threads)."""
    s = workspace().store()
    try:
        yield s
    finally:
        s.close()


# -- who is using the app -----------------------------------------------------------------------
SESSION_KEY = "auth_session"


def principal() -> Principal | None:
    """The signed-in principal of this browser session (``None``: not signed in or expired).

    Services get this and decide themselves: ``None`` is the local maintainer only while the
    workspace has no accounts (single-user mode), and refused otherwise.
    """
    session = st.session_state.get(SESSION_KEY)
    if session is None or session.expired():
        return None
    return session.principal


def may(action: str) -> bool:
    """Whether to offer a control (the service checks again; this only hides what would fail)."""
    who = principal()
    if who is None:
        with store() as s:
            who = None if has_accounts(s) else LOCAL
    return allowed(who, action)


def may_start(kind: str) -> bool:
    """Whether to offer starting a background job of ``kind`` (the rule ``start_job`` applies)."""
    return may(JOB_ACTIONS.get(kind, "train"))


def offer(action: str, what: str) -> bool:
    """The one rule for role-gated controls: True when this visitor may do ``action``.

    Otherwise the control is not drawn and one line says why ("... maintainers only"), so an
    annotator never clicks a button only to be refused. The service refuses anyway
    (:mod:`core.access`); this only keeps pages honest about what a role can do.
    """
    if may(action):
        return True
    who = principal()
    role = ACTIONS[action]
    st.caption(f":material/lock: {what}: {role}s only"
               + (f" (you are signed in as {who.user}, {who.role})." if who else "."))
    return False


def busy(kind: str) -> bool:
    """True while a job that would block a new ``kind`` job (same lock group) is active.

    Start buttons are disabled then, instead of offering a click the job layer would refuse.
    """
    group = JOB_KINDS[kind].group
    with store() as s:
        return bool(active_jobs(s, group=group))


# -- page frame and errors -----------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def page_icon() -> Image.Image:
    """The browser-tab icon, drawn here and served by the app itself.

    A ``:material/...:`` page icon makes the browser fetch the symbol from fonts.gstatic.com,
    and the app must make no request to outside hosts (issue 14): a small drawn car instead.
    """
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle((2, 2, 62, 62), radius=12, fill=(76, 120, 168, 255))
    draw.rounded_rectangle((10, 28, 54, 44), radius=5, fill="white")      # body
    draw.polygon([(18, 28), (24, 18), (42, 18), (48, 28)], fill="white")    # cabin
    for x in (20, 44):
        draw.ellipse((x - 6, 38, x + 6, 50), fill=(40, 40, 40, 255))       # wheels
    return img


def page(title: str, icon: str = "") -> None:
    """Common page start: config (when run standalone), title, sidebar facts."""
    try:
        st.set_page_config(page_title=f"{title} · Car Grouping", page_icon=page_icon(),
                           layout="wide")
    except st.errors.StreamlitAPIException:
        pass  # already set by the navigation entry point
    st.title(f"{title}")
    sidebar_status()


def sidebar_status() -> None:
    ws = workspace()
    with st.sidebar:
        st.caption(f"Workspace: `{ws.root}`")
        with store() as s:
            reap_stale(s)
            active = s.jobs(active_only=True)
        for job in active:
            title = JOB_KINDS[job["kind"]].title if job["kind"] in JOB_KINDS else job["kind"]
            st.progress(float(job["progress"]), text=f"#{job['id']} {title}: {job['message']}")


def show_error(exc: BaseException) -> None:
    """One readable message; the traceback goes to the server log only."""
    if isinstance(exc, READABLE_ERRORS):
        st.error(str(exc) or type(exc).__name__, icon=":material/error:")
    else:
        log.exception("page error")
        st.error(f"Something went wrong ({type(exc).__name__}): {exc}. "
                 "The details are in the app's terminal log.", icon=":material/error:")


@contextmanager
def guard(what: str | None = None) -> Iterator[None]:
    """Turn an exception inside the block into a readable message (Streamlit's own control
    exceptions such as ``st.rerun``/``st.stop`` derive from BaseException and pass through)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - the point is to never show a traceback
        package = missing_optional(exc)
        if package is None:  # a typo or a broken install is an error, not a missing feature
            show_error(exc)
        else:  # an optional part of the app is not installed
            st.warning(f"{what or 'This feature'} is not available in this installation "
                       f"(the {package} package is not installed).",
                       icon=":material/extension_off:")


def require_sign_in() -> None:
    """Stop a page that runs without a sign-in while the workspace has accounts.

    ``Home.py``'s gate draws the sign-in form before any page; this is the second fence, for any
    route that reaches a page file without it (a page's own address once did, see
    tests/test_signin_every_page.py). It draws nothing of the page, only the way back.
    """
    if principal() is not None:
        return
    with store() as s:
        if not has_accounts(s):
            return  # single-user mode on loopback: the local maintainer
    st.warning("Sign in first: this workspace has accounts. Open the app's home page to sign in.",
               icon=":material/lock:")
    st.markdown("[Go to the sign-in page](/)")
    st.stop()


def run_page(body: Callable[[], None]) -> None:
    """Run a page body under :func:`guard`, after :func:`require_sign_in`."""
    require_sign_in()
    with guard():
        body()


def link(page_file: str, label: str, icon: str | None = None) -> None:
    """A link to another page; plain text where navigation is not set up (standalone tests)."""
    try:
        st.page_link(page_file, label=label, icon=icon)
    except Exception:  # noqa: BLE001 - page not registered in this run
        st.markdown(f"→ **{label}**")


def require_images(s: ProjectStore) -> None:
    """Stop the page with a pointer to the Overview when the pool is empty."""
    if s.count_images() == 0:
        st.info("The pool is empty. Create a demo pool or ingest images on the Overview page.",
                icon=":material/info:")
        link("views/0_Overview.py", "Go to Overview", ":material/dashboard:")
        st.stop()


def age_text(timestamp: float, now: float | None = None) -> str:
    """'5 min ago' style text."""
    seconds = max(0.0, (now or time.time()) - timestamp)
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if unit == 'day' and n > 1 else ''} ago"
    return f"{int(seconds)} s ago"


# -- background jobs -----------------------------------------------------------------------------
def start(kind: str, params: dict[str, Any] | None = None) -> int | None:
    """Start a background job; a refusal (another job of its kind running) is a warning."""
    try:
        who = principal()  # None: the service decides (local maintainer only without accounts)
        job_id = start_job(workspace(), kind, params or {},
                           **({"principal": who} if who is not None else {}))
    except JobConflict as exc:
        st.warning(str(exc), icon=":material/hourglass:")
        return None
    except AccessDenied as exc:
        st.error(str(exc), icon=":material/lock:")
        return None
    st.toast(f"Started {JOB_KINDS[kind].title} (job #{job_id})")
    return job_id


def job_panel(kinds: str | tuple[str, ...], *, key: str,
              extra: Callable[[dict[str, Any]], None] | None = None,
              show_finished: bool = True) -> dict[str, Any] | None:
    """Live view of the latest job of ``kinds``: progress bar, message, cancel; refreshes itself.

    While the job is active the panel is a fragment re-run every second; when it ends the whole
    page reruns once so results drawn outside the panel (new model, new queue) appear.
    Returns the job row as seen on this run.
    """
    with store() as s:
        job = latest_job(s, kinds)
    if job is None:
        return None
    active = job["status"] in ACTIVE
    seen_key = f"_job_seen_{key}"

    def body() -> None:
        with store() as s:
            current = latest_job(s, kinds)
        if current is None:
            return
        was_active = st.session_state.get(seen_key) == ("active", current["id"])
        is_active = current["status"] in ACTIVE
        st.session_state[seen_key] = ("active" if is_active else "done", current["id"])
        if was_active and not is_active:
            st.rerun()  # the job just ended: redraw the whole page with its results
        _draw_job(current, key=key)
        if extra is not None:
            extra(current)

    if active:
        st.fragment(run_every=1.0)(body)()
    elif show_finished:
        body()
    return job


def _draw_job(job: dict[str, Any], *, key: str) -> None:
    title = JOB_KINDS[job["kind"]].title if job["kind"] in JOB_KINDS else job["kind"]
    status = job["status"]
    head = f"Job #{job['id']} · {title} · **{status}**"
    if status in ACTIVE:
        cols = st.columns([5, 1])
        cols[0].progress(float(job["progress"]), text=f"{head} — {job['message']}")
        if may("cancel_job") and cols[1].button(
                "Cancel", key=f"cancel_{key}_{job['id']}", icon=":material/stop:",
                disabled=bool(job["cancel_requested"])):
            cancel_job(workspace(), job["id"], principal=principal())
            st.rerun()
    elif status == "succeeded":
        st.success(f"{head} — {job['message']}", icon=":material/check_circle:")
    elif status == "cancelled":
        st.warning(f"{head} — {job['message']}", icon=":material/cancel:")
    else:
        st.error(f"{head} — {job['message']}", icon=":material/error:")


def save_upload(upload: Any, folder: str = "uploads") -> Path:
    """Write an uploaded file into the workspace (``pools/<folder>/``) and return its path.

    The name is reduced to its base name so an upload can never write outside that folder.
    """
    target_dir = workspace().pools_dir / folder
    target_dir.mkdir(parents=True, exist_ok=True)
    name = Path(str(upload.name)).name or "upload.bin"
    target = target_dir / name
    target.write_bytes(upload.getvalue())
    return target
