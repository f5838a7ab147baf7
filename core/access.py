"""Who may do what: principals, roles, the permission check the services call, and the audit trail.

Why in ``core`` and not in the pages: hiding a button is not access control. Every service that
changes the project (start a job, save a label, promote a model, save CVAT settings, manage users)
calls :func:`require` with the principal the request came from, so a crafted request from a page
is refused the same way as a click on a visible button.

Who is the principal:
- the app after a sign-in: the signed-in account;
- the app on loopback with no accounts in the workspace: :data:`LOCAL` (single-user mode);
- the command line: the shell user, as a maintainer (:func:`cli_principal`): whoever can run
  ``python -m core`` on this machine can already open the database file;
- nobody (``None``) while the workspace has accounts: refused.
"""
from __future__ import annotations

import getpass
from dataclasses import dataclass
from typing import Any, Mapping

from data import accounts
from data.accounts import ROLES
from data.errors import UserError
from data.store import ProjectStore

# The least role each action needs (issue 14's table).
ACTIONS: dict[str, str] = {
    "label": "annotator", "skip": "annotator",
    "review": "reviewer",
    "ingest": "maintainer", "sample": "maintainer", "train": "maintainer",
    "evaluate": "maintainer", "promote": "maintainer", "rollback": "maintainer",
    "rank": "maintainer", "export": "maintainer", "configure_cvat": "maintainer",
    "cvat_push": "maintainer", "cvat_pull": "maintainer", "manage_users": "maintainer",
    "simulate": "maintainer", "cancel_job": "maintainer",
    "configure_labelling": "maintainer",  # the Label page's pre-fill thresholds (issue 13)
    # several annotators (core/assignment.py, core/claims.py, core/double.py)
    "assign_rounds": "maintainer", "configure_team": "maintainer",
}

# What starting a background job of each kind amounts to.
JOB_ACTIONS: dict[str, str] = {
    "demo": "ingest", "ingest": "ingest", "sample": "sample", "label_sim": "simulate",
    "train": "train", "evaluate": "evaluate", "queue": "rank", "export": "export",
    "cvat_push": "cvat_push", "cvat_pull": "cvat_pull", "selftest": "evaluate",
    # A head refit only re-orders the open batches from the labels already saved; labelling
    # starts it (every few saves), so whoever may label may start it.
    "refit": "label",
}


class AccessDenied(UserError, PermissionError):
    """The principal's role does not allow the action (or nobody is signed in)."""


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: a user name and a role."""

    user: str
    role: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}")

    def may(self, action: str) -> bool:
        return allowed(self, action)


LOCAL = Principal("local", "maintainer")


def cli_principal() -> Principal:
    """The shell user running ``python -m core``, with the maintainer role."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "shell"
    return Principal(f"cli:{name}", "maintainer")


def allowed(principal: Principal | None, action: str) -> bool:
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    if principal is None:
        return False
    return ROLES.index(principal.role) >= ROLES.index(ACTIONS[action])


def require(principal: Principal | None, action: str) -> Principal:
    """Return the principal if it may do ``action``; else raise :class:`AccessDenied`."""
    if allowed(principal, action):
        assert principal is not None
        return principal
    what = action.replace("_", " ")
    if principal is None:
        raise AccessDenied(f"sign in first: this workspace has accounts, and {what} needs "
                           f"the {ACTIONS[action]} role")
    raise AccessDenied(f"{principal.user} ({principal.role}) may not {what}: "
                       f"that needs the {ACTIONS[action]} role")


def resolve(store: ProjectStore, principal: Principal | None) -> Principal | None:
    """The effective principal: as given, else :data:`LOCAL` while the workspace has no accounts."""
    if principal is not None:
        return principal
    return None if accounts.has_accounts(store) else LOCAL


def authorize(store: ProjectStore, principal: Principal | None, action: str) -> Principal:
    """:func:`resolve` then :func:`require`: the one call a service makes before acting."""
    return require(resolve(store, principal), action)


def audit(store: ProjectStore, principal: Principal, action: str,
          details: Mapping[str, Any] | None = None, *, job_id: int | None = None) -> int:
    """Record that ``principal`` did ``action`` (never pass secrets in ``details``)."""
    return accounts.record(store, principal.user, action, details, role=principal.role,
                           job_id=job_id)


def job_requester(store: ProjectStore, job_id: int) -> Principal | None:
    """Who started a job (from the audit entry written when it was started)."""
    for entry in accounts.audit_entries(store, job_id=job_id):
        if entry["role"] in ROLES and entry["details"].get("event") == "started":
            return Principal(entry["user"], entry["role"])
    return None
