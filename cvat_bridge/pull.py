"""Job states of pushed tasks, and pulling their tags back as labels.

``pull`` exports each task in ``Datumaro 1.0`` through cvat-sdk (annotations only), parses the
zip with ``datumaro`` (data/datumaro_io.py), maps items to images through the recorded task
items, validates every value against the schema (CVAT stores unknown select values without
complaint) and writes the labels with provenance ``source='cvat'``,
``source_ref='task:<id>/job:<id>'`` in one transaction (all tasks together). Pulling again adds nothing; a changed
tag becomes a new label version; untagged items are reported as unlabelled.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvat_bridge import records
from cvat_bridge.client import Connection, CvatError, CvatNotFound, retry_call, translate_errors
from data.datumaro_io import ImportReport, ParsedItem, import_datumaro

log = logging.getLogger(__name__)

EXPORT_FORMAT = "Datumaro 1.0"


@dataclass
class JobStatus:
    id: int
    start_frame: int
    stop_frame: int
    state: str
    stage: str
    assignee: str | None
    tagged: int

    @property
    def frames(self) -> int:
        return self.stop_frame - self.start_frame + 1


@dataclass
class TaskStatus:
    task_id: int
    name: str
    round_number: int | None
    size: int
    exists: bool = True
    jobs: list[JobStatus] = field(default_factory=list)

    @property
    def tagged(self) -> int:
        return sum(j.tagged for j in self.jobs)

    @property
    def progress(self) -> float:
        return self.tagged / self.size if self.size else 0.0

    @property
    def completed_jobs(self) -> int:
        return sum(1 for j in self.jobs if j.state == "completed")

    def summary(self) -> str:
        if not self.exists:
            return f"task #{self.task_id} (round {self.round_number}): deleted on the server"
        return (f"task #{self.task_id} (round {self.round_number}) {self.name!r}: "
                f"{self.tagged}/{self.size} tagged ({self.progress:.0%}), "
                f"{self.completed_jobs}/{len(self.jobs)} jobs completed")


@dataclass
class PullResult:
    task_id: int
    round_number: int | None
    report: ImportReport

    def summary(self) -> str:
        return f"task #{self.task_id} (round {self.round_number}): {self.report.summary()}"


def _task_or_missing(conn: Connection, task_id: int) -> Any | None:
    try:
        with translate_errors(conn.host, f"read task {task_id}"):
            return conn.client.tasks.retrieve(task_id)
    except CvatNotFound:
        return None


def _selected(store: Any, conn: Connection, task_id: int | None) -> list[records.TaskRecord]:
    if task_id is None:
        return records.tasks(store, conn.host)
    rec = records.task(store, conn.host, task_id)
    if rec is None:
        raise CvatError(f"task {task_id} was not pushed from this workspace to {conn.host}; "
                        "use import-datumaro for tasks made by hand")
    return [rec]


def task_status(conn: Connection, store: Any, task_id: int | None = None) -> list[TaskStatus]:
    """Per pushed task: its jobs' states and how many frames carry a tag."""
    out = []
    for rec in _selected(store, conn, task_id):
        status = TaskStatus(task_id=rec.task_id, name=rec.name, round_number=rec.round_number,
                            size=rec.size)
        task = _task_or_missing(conn, rec.task_id)
        if task is None:
            status.exists = False
            out.append(status)
            continue
        with translate_errors(conn.host, f"read the jobs of task {rec.task_id}"):
            tagged_frames = {t.frame for t in task.get_annotations().tags}
            for job in sorted(task.get_jobs(), key=lambda j: j.start_frame):
                assignee = job.assignee.username if getattr(job, "assignee", None) else None
                status.jobs.append(JobStatus(
                    id=int(job.id), start_frame=int(job.start_frame),
                    stop_frame=int(job.stop_frame), state=str(job.state), stage=str(job.stage),
                    assignee=assignee,
                    tagged=sum(1 for f in tagged_frames
                               if job.start_frame <= f <= job.stop_frame)))
        out.append(status)
    return out


def _export(conn: Connection, task: Any, dest: Path) -> Path:
    def attempt() -> Path:
        dest.unlink(missing_ok=True)
        task.export_dataset(EXPORT_FORMAT, dest, include_images=False)
        return dest
    with translate_errors(conn.host, f"export task {task.id} as {EXPORT_FORMAT}"):
        return retry_call(attempt, conn.settings, f"export of task {task.id}")


def _prepare(conn: Connection, store: Any, rec: records.TaskRecord, tmp: Path) -> dict[str, Any]:
    """Network half of a pull: the task's jobs and its Datumaro export on disk."""
    task = _task_or_missing(conn, rec.task_id)
    if task is None:
        raise CvatNotFound(f"task {rec.task_id} (round {rec.round_number}) no longer exists on "
                           f"{conn.host}")
    with translate_errors(conn.host, f"read the jobs of task {rec.task_id}"):
        jobs = [(int(j.start_frame), int(j.stop_frame), int(j.id),
                 j.assignee.username if getattr(j, "assignee", None) else None)
                for j in task.get_jobs()]
    path = _export(conn, task, tmp / f"task_{rec.task_id}_datumaro.zip")
    return {"rec": rec, "jobs": jobs, "path": path}


def _import(conn: Connection, ws: Any, store: Any, prepared: dict[str, Any]) -> PullResult:
    """Store half of a pull: map items to images and write labels with provenance."""
    rec: records.TaskRecord = prepared["rec"]
    jobs = prepared["jobs"]
    item_map: dict[str, int] = {}
    frame_of: dict[str, int] = {}
    for image_id, frame, item_name in records.items(store, rec):
        stem = Path(item_name).stem
        item_map[stem] = image_id
        frame_of[stem] = frame

    def job_for(item: ParsedItem) -> tuple[int | None, str | None]:
        frame = item.frame if item.frame is not None else frame_of.get(item.id)
        for lo, hi, jid, who in jobs:
            if frame is not None and lo <= frame <= hi:
                return jid, who
        return None, None

    def ref(item: ParsedItem) -> str:
        jid, _ = job_for(item)
        return f"task:{rec.task_id}/job:{jid if jid is not None else '?'}"

    report = import_datumaro(ws, prepared["path"], source="cvat", store=store, item_map=item_map,
                             source_ref=ref, annotator=lambda it: job_for(it)[1],
                             round_id=rec.round_id)
    report.source = f"{conn.host} task {rec.task_id}"
    return PullResult(task_id=rec.task_id, round_number=rec.round_number, report=report)


def pull(conn: Connection, ws: Any, store: Any, task_id: int | None = None) -> list[PullResult]:
    """Pull every pushed task (or one), all or nothing.

    All exports are downloaded first; only then are the labels of every task written, in one
    transaction, so a failure (network, a malformed export) leaves the store unchanged.
    """
    selected = _selected(store, conn, task_id)
    if not selected:
        raise CvatError(f"nothing to pull: no task was pushed from this workspace to {conn.host}")
    with tempfile.TemporaryDirectory(prefix="cargroup-pull-") as tmp:
        prepared = [_prepare(conn, store, rec, Path(tmp)) for rec in selected]
        with store.transaction():
            return [_import(conn, ws, store, p) for p in prepared]


__all__ = ["JobStatus", "TaskStatus", "PullResult", "task_status", "pull"]
