"""Where the CVAT server is and how to log in: environment variables or a secrets file.

Why a separate module: credentials must never reach the project database, a log line or a
traceback. They live only in a :class:`CvatSettings` object whose ``repr`` masks them, read from
``CVAT_*`` environment variables or from a JSON secrets file (``<workspace>/cvat.json`` or
``~/.config/cargroup/cvat.json``). A secrets file readable by other users gets a warning.
"""
from __future__ import annotations

import json
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from data.errors import UserError

ENV_HOST = "CVAT_HOST"
ENV_USERNAME = "CVAT_USERNAME"
ENV_PASSWORD = "CVAT_PASSWORD"
ENV_TOKEN = "CVAT_ACCESS_TOKEN"
ENV_ORG = "CVAT_ORG"
ENV_PROJECT = "CVAT_PROJECT"
ENV_SECRETS = "CVAT_SECRETS_FILE"

SECRETS_FILE_NAME = "cvat.json"
USER_SECRETS_FILE = Path("~/.config/cargroup/cvat.json")


class SettingsError(UserError):
    """CVAT connection settings are missing or unusable."""


@dataclass(frozen=True)
class CvatSettings:
    """Connection settings. ``password``/``access_token`` are hidden from repr and str."""

    host: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)
    organization: str | None = None
    project_name: str | None = None
    source: str = "arguments"
    # Network behaviour; tests make these small.
    timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 0.5
    status_check_period_s: float = 2.0
    operation_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.host:
            raise SettingsError("no CVAT host configured; set CVAT_HOST or write cvat.json")
        host = self.host.strip().rstrip("/")
        if "://" not in host:
            host = "https://" + host          # what cvat-sdk assumes; recorded tasks use it too
        object.__setattr__(self, "host", host)
        if not (self.access_token or (self.username and self.password)):
            raise SettingsError(
                "no CVAT credentials: set CVAT_ACCESS_TOKEN, or CVAT_USERNAME and CVAT_PASSWORD "
                f"(from {self.source})")

    def __repr__(self) -> str:
        auth = "token" if self.access_token else f"user {self.username!r} + password"
        org = f", org={self.organization!r}" if self.organization else ""
        return f"CvatSettings(host={self.host!r}, auth={auth} (hidden){org}, source={self.source})"

    __str__ = __repr__

    @property
    def auth_kind(self) -> str:
        return "access token" if self.access_token else "password"

    def with_network(self, **kwargs: float) -> "CvatSettings":
        """A copy with other timeout/retry values (kept immutable so nothing leaks by mutation)."""
        from dataclasses import replace
        return replace(self, **kwargs)


def _check_permissions(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.warn(f"CVAT secrets file {path} is readable by other users; run chmod 600 {path}",
                      stacklevel=3)


def _from_mapping(data: Mapping[str, object], source: str, **network: float) -> CvatSettings:
    def text(*keys: str) -> str | None:
        for key in keys:
            value = data.get(key)
            if value not in (None, ""):
                return str(value)
        return None
    return CvatSettings(
        host=text("host", "url") or "",
        username=text("username", "user"),
        password=text("password"),
        access_token=text("access_token", "token"),
        organization=text("organization", "org"),
        project_name=text("project", "project_name"),
        source=source,
        **network,
    )


def secrets_candidates(workspace_root: Path | None) -> list[Path]:
    """Secrets files in the order they are tried."""
    out: list[Path] = []
    if os.environ.get(ENV_SECRETS):
        out.append(Path(os.environ[ENV_SECRETS]).expanduser())
    if workspace_root is not None:
        out.append(Path(workspace_root) / SECRETS_FILE_NAME)
    out.append(USER_SECRETS_FILE.expanduser())
    return out


def load_settings(workspace_root: Path | None = None, *,
                  env: Mapping[str, str] | None = None, **network: float) -> CvatSettings:
    """Environment first (``CVAT_HOST`` set), else the first secrets file that exists."""
    env = os.environ if env is None else env
    if env.get(ENV_HOST):
        return _from_mapping({
            "host": env.get(ENV_HOST), "username": env.get(ENV_USERNAME),
            "password": env.get(ENV_PASSWORD), "access_token": env.get(ENV_TOKEN),
            "organization": env.get(ENV_ORG), "project": env.get(ENV_PROJECT),
        }, "environment", **network)
    for path in secrets_candidates(workspace_root):
        if path.is_file():
            _check_permissions(path)
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise SettingsError(f"cannot read CVAT secrets file {path}: {exc}") from None
            if not isinstance(data, dict):
                raise SettingsError(f"CVAT secrets file {path} must hold a JSON object")
            return _from_mapping(data, str(path), **network)
    raise SettingsError(
        "CVAT is not configured: set CVAT_HOST and CVAT_ACCESS_TOKEN (or CVAT_USERNAME/"
        "CVAT_PASSWORD), or write " + " or ".join(str(p) for p in secrets_candidates(workspace_root)))


def write_secrets_file(path: Path, settings: Mapping[str, str]) -> Path:
    """Write a secrets file readable by the owner only (used by docs examples and tests)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(dict(settings), fh, indent=2)
    os.chmod(path, 0o600)
    return path
