"""Saving CVAT connection settings from the app, and what the app may show about them.

Why a service: the CVAT credentials let whoever holds them act on the annotation server, so only
a maintainer may change them (checked here, not by hiding a form), they are written only to the
owner-only (0600) secrets file in the workspace, and what a page may show is limited to
:class:`CvatSummary`: host, user name and whether a secret is set, never the secret itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.access import Principal, audit, authorize
from cvat_bridge.settings import SECRETS_FILE_NAME, CvatSettings, load_settings, write_secrets_file
from data.workspace import Workspace


@dataclass(frozen=True)
class CvatSummary:
    """The shareable facts about the CVAT connection (no secret)."""

    host: str
    username: str | None
    secret_set: bool
    auth_kind: str
    from_environment: bool


def summary(ws: Workspace) -> CvatSummary:
    """What the CVAT page shows; raises ``SettingsError`` when CVAT is not configured."""
    s = load_settings(Path(ws.root))
    return CvatSummary(host=s.host, username=s.username,
                       secret_set=bool(s.password or s.access_token), auth_kind=s.auth_kind,
                       from_environment=s.source == "environment")


def known_secrets(ws: Workspace) -> list[str]:
    """The CVAT password/token in effect (to scrub from job messages and logs); [] if none."""
    try:
        s = load_settings(Path(ws.root))
    except Exception:  # noqa: BLE001 - unconfigured or unreadable: nothing to scrub
        return []
    return [v for v in (s.password, s.access_token) if v and len(v) >= 4]


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "[secret hidden]")
    return text


def save_settings(ws: Workspace, *, host: str, username: str | None = None,
                  password: str | None = None, access_token: str | None = None,
                  organization: str | None = None, project: str | None = None,
                  principal: Principal | None = None) -> Path:
    """Validate and write ``<workspace>/cvat.json`` (mode 0600); maintainers only, audited."""
    with ws.store() as store:
        who = authorize(store, principal, "configure_cvat")
        CvatSettings(host=host, username=username or None, password=password or None,
                     access_token=access_token or None, source="the CVAT page")  # validates
        data = {k: v for k, v in (("host", host), ("username", username), ("password", password),
                                  ("access_token", access_token), ("organization", organization),
                                  ("project", project)) if v}
        path = write_secrets_file(ws.root / SECRETS_FILE_NAME, data)
        audit(store, who, "configure_cvat",
              {"host": host, "username": username or None,
               "auth": "access token" if access_token else "password"})
    return path
