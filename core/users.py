"""Managing team accounts (maintainers only) and signing in (anyone with an account).

The account tables and password hashing live in :mod:`data.accounts`; this module adds the
permission check and the audit entry every change needs, for the CLI and the app alike.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from core.access import Principal, audit, authorize
from data import accounts
from data.accounts import Account
from data.workspace import Workspace

DEFAULT_SESSION_MINUTES = 8 * 60


@dataclass(frozen=True)
class Session:
    """A signed-in principal and when the sign-in stops being valid."""

    principal: Principal
    expires_at: float

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at


def session_minutes(ws: Workspace) -> float:
    """How long a sign-in lasts: ``session_minutes`` in the workspace's config.json (default 8 h)."""
    import json
    try:
        data = json.loads(ws.config_path.read_text(encoding="utf-8"))
        return float(data.get("session_minutes", DEFAULT_SESSION_MINUTES))
    except (OSError, ValueError, TypeError, AttributeError):
        return float(DEFAULT_SESSION_MINUTES)


def sign_in(ws: Workspace, name: str, password: str, *, now: float | None = None) -> Session:
    """Check a name and password (rate-limited per name); raises ``SignInRefused`` on failure."""
    now = time.time() if now is None else now
    with ws.store() as store:
        try:
            acc = accounts.verify(store, name, password, now=now)
        except accounts.SignInRefused as exc:
            accounts.record(store, (name or "").strip() or "?", "sign_in_failed",
                            {"reason": str(exc)}, at=now)
            raise
        principal = Principal(acc.name, acc.role)
        audit(store, principal, "sign_in")
    return Session(principal, now + 60.0 * session_minutes(ws))


def sign_in_oidc(ws: Workspace, email: str, *, now: float | None = None) -> Session:
    """A sign-in vouched for by the team's identity provider (Streamlit's ``st.login``).

    The provider proves who the visitor is; the workspace still decides what they may do: the
    role is that of the enabled account named by the e-mail address (``users add
    ann@example.org --role annotator``). No such account, or a disabled one: refused.
    """
    now = time.time() if now is None else now
    email = (email or "").strip().lower()
    with ws.store() as store:
        found = next((a for a in accounts.list_users(store) if a.name.lower() == email), None)
        if not email or found is None or found.disabled:
            accounts.record(store, email or "?", "sign_in_failed",
                            {"reason": "no enabled account for this e-mail", "via": "oidc"}, at=now)
            raise accounts.SignInRefused(
                f"{email or 'this identity'} signed in with the identity provider but has no "
                "enabled account in this workspace; ask a maintainer to run "
                f"`python -m core users add {email or 'EMAIL'} --role annotator`")
        principal = Principal(found.name, found.role)
        audit(store, principal, "sign_in", {"via": "oidc"})
    return Session(principal, now + 60.0 * session_minutes(ws))


def has_accounts(ws: Workspace) -> bool:
    with ws.store() as store:
        return accounts.has_accounts(store)


def add_user(ws: Workspace, name: str, role: str, password: str, *,
             principal: Principal | None = None) -> Account:
    with ws.store() as store:
        who = authorize(store, principal, "manage_users")
        acc = accounts.add_user(store, name, role, password)
        audit(store, who, "manage_users", {"event": "add", "name": acc.name, "role": acc.role})
    return acc


def list_users(ws: Workspace, *, principal: Principal | None = None) -> list[Account]:
    with ws.store() as store:
        authorize(store, principal, "manage_users")
        return accounts.list_users(store)


def set_disabled(ws: Workspace, name: str, disabled: bool = True, *,
                 principal: Principal | None = None) -> None:
    with ws.store() as store:
        who = authorize(store, principal, "manage_users")
        accounts.set_disabled(store, name, disabled)
        audit(store, who, "manage_users", {"event": "disable" if disabled else "enable",
                                           "name": name})


def set_password(ws: Workspace, name: str, password: str, *,
                 principal: Principal | None = None) -> None:
    """Maintainers may reset anyone's password; everyone may change their own."""
    with ws.store() as store:
        who = principal if (principal is not None and principal.user == name) \
            else authorize(store, principal, "manage_users")
        accounts.set_password(store, name, password)
        audit(store, who, "manage_users", {"event": "passwd", "name": name})


def set_role(ws: Workspace, name: str, role: str, *, principal: Principal | None = None) -> None:
    with ws.store() as store:
        who = authorize(store, principal, "manage_users")
        accounts.set_role(store, name, role)
        audit(store, who, "manage_users", {"event": "role", "name": name, "role": role})
