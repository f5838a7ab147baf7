"""Workspace-level CVAT operations: what the CLI and the Streamlit app call.

Each function loads the settings (environment or secrets file), connects through cvat-sdk,
does one job and closes the connection. Failures raise :class:`cvat_bridge.client.CvatError`
(a ``UserError``: one readable sentence, no secrets).

    from cvat_bridge import service
    info = service.check(ws)                       # CheckResult
    res = service.push(ws, round_number=3, segment_size=50, prefill=True)   # PushResult
    rows = service.status(ws)                      # list[TaskStatus]
    results = service.pull(ws)                     # list[PullResult] (report per task)
    service.export_round(ws, 3, "round3.zip")      # ManualExport
    data.datumaro_io.import_datumaro(ws, "export.zip")   # ImportReport
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvat_bridge.client import Connection, CvatError, connect, translate_errors
from cvat_bridge.auto_annotation import prefill_task
from cvat_bridge.manual import export_round as write_zip
from cvat_bridge.pull import forget as forget_task
from cvat_bridge.pull import pull as pull_tasks
from cvat_bridge.pull import task_status
from cvat_bridge.push import push_round
from cvat_bridge.settings import CvatSettings, load_settings
from cvat_bridge.spec import compare_labels, default_project_name, find_project
from data.progress import ProgressFn

log = logging.getLogger(__name__)


@dataclass
class CheckResult:
    host: str
    server_version: str
    sdk_version: str
    username: str
    auth: str
    organization: str | None
    version_relaxed: bool
    warnings: list[str] = field(default_factory=list)
    project: str | None = None          # "name #id" when it exists
    spec_differences: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"CVAT {self.server_version} at {self.host} (cvat-sdk {self.sdk_version})",
               f"logged in as {self.username} ({self.auth})"
               + (f", organisation {self.organization}" if self.organization else "")]
        out += [f"warning: {w}" for w in self.warnings]
        if self.project is None:
            out.append("project: not created yet (the first push creates it)")
        elif self.spec_differences:
            out.append(f"project {self.project}: label spec DIFFERS, push is refused:")
            out += [f"  - {d}" for d in self.spec_differences]
        else:
            out.append(f"project {self.project}: label spec matches")
        return out


def settings_for(ws: Any, settings: CvatSettings | None = None) -> CvatSettings:
    return settings if settings is not None else load_settings(Path(ws.root))


def open_connection(ws: Any, settings: CvatSettings | None = None) -> Connection:
    return connect(settings_for(ws, settings))


def _project_name(ws: Any, conn: Connection) -> str:
    return conn.settings.project_name or default_project_name(Path(ws.root).name)


def check(ws: Any, settings: CvatSettings | None = None) -> CheckResult:
    """Server version, user, and whether an existing project's label spec matches ours."""
    with open_connection(ws, settings) as conn:
        result = CheckResult(host=conn.host, server_version=conn.server_version,
                             sdk_version=conn.sdk_version, username=conn.username,
                             auth=conn.settings.auth_kind,
                             organization=conn.settings.organization,
                             version_relaxed=conn.version_relaxed, warnings=list(conn.warnings))
        name = _project_name(ws, conn)
        with ws.store() as store, translate_errors(conn.host, "look up the project"):
            project = find_project(conn, store, name, named=bool(conn.settings.project_name))
            if project is not None:
                result.project = f"{project.name!r} #{project.id}"
                result.spec_differences = compare_labels(ws.schema, project.get_labels())
        return result


def push(ws: Any, round_number: int, *, settings: CvatSettings | None = None,
         **options: Any):
    """Create a CVAT task for a round (see cvat_bridge.push.push_round for options)."""
    with open_connection(ws, settings) as conn, ws.store() as store:
        return push_round(conn, ws, store, round_number, **options)


def status(ws: Any, task_id: int | None = None, *, settings: CvatSettings | None = None):
    with open_connection(ws, settings) as conn, ws.store() as store:
        return task_status(conn, store, task_id)


def pull(ws: Any, task_id: int | None = None, *, settings: CvatSettings | None = None,
         retract_deleted: bool = False, progress: ProgressFn | None = None):
    """Pull labels; ``progress(Progress)`` (:mod:`data.progress`) follows the SDK's download hooks."""
    with open_connection(ws, settings) as conn, ws.store() as store:
        return pull_tasks(conn, ws, store, task_id, retract_deleted=retract_deleted,
                          progress=progress)


def forget(ws: Any, task_id: int, *, settings: CvatSettings | None = None):
    """Forget a pushed task (e.g. deleted in CVAT) without contacting the server."""
    settings = settings_for(ws, settings)
    with ws.store() as store:
        return forget_task(store, settings.host, task_id)


def prefill(ws: Any, task_id: int, *, model_path: str | Path | None = None,
            conf_threshold: float | None = None, clear_existing: bool = False,
            settings: CvatSettings | None = None, progress: ProgressFn | None = None):
    """Pre-label a CVAT task with our ONNX model (cvat_bridge.auto_annotation.prefill_task)."""
    with open_connection(ws, settings) as conn:
        return prefill_task(conn, task_id, model_path=model_path, conf_threshold=conf_threshold,
                            clear_existing=clear_existing, progress=progress)


def export_round(ws: Any, round_number: int, out: str | Path, *,
                 include_labelled: bool = False):
    """The manual route's zip; already-labelled images are left out unless ``include_labelled``."""
    with ws.store() as store:
        return write_zip(ws, store, round_number, out, include_labelled=include_labelled)


__all__ = ["CheckResult", "CvatError", "check", "push", "status", "pull", "forget", "prefill",
           "export_round",
           "open_connection", "settings_for"]
