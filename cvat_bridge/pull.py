"""Job states of pushed tasks, and pulling their tags back as labels.

``pull`` exports each task in ``Datumaro 1.0`` through cvat-sdk (annotations only), parses the
zip with ``datumaro`` (data/datumaro_io.py), maps items to images through the recorded task
items, validates every value against the schema (CVAT stores unknown select values without
complaint) and writes the labels with provenance ``source='cvat'``,
``source_ref='task:<id>/job:<id>'`` in one transaction (all tasks together). Pulling again adds
nothing; a changed tag becomes a new label version; untagged items are reported as unlabelled.

What the export does not say is read through the annotations API and the task's meta:

- **Who made a tag.** CVAT keeps each tag's ``source``: ``auto`` (auto-annotation, our
  ``push --prefill``), ``semi-auto`` (a person edited an auto tag in the UI), ``manual``
  (trace i). The export drops it. A pre-filled tag counts as **reviewed** when a person
  touched it (``manual``/``semi-auto``) or when its job's state is ``completed`` (a person
  finished the job in CVAT). Unreviewed ``auto`` tags are *held*: reported, never stored, so
  the model does not train on its own output.
- **Defaults.** CVAT reports an attribute a tag left out as the spec's ``default_value``
  (trace h). Our spec has none (``""``, read as missing); in an older project whose default is
  a real class, an ``auto`` tag's value equal to it is dropped, never stored as a label.
- **Deleted frames** (``data/meta`` ``deleted_frames``) are left out of the export (trace k);
  pull and status report them instead of silently losing them.
- **Deleted tags.** An item without a tag whose image's current label came from this task
  was untagged in CVAT after an earlier pull; pull reports it and ``retract_deleted`` writes a
  new, empty label version (the history keeps the old one).
- **Deleted tasks** (404) are skipped with a warning; ``cvat forget --task N`` drops the record.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvat_sdk.api_client import exceptions as api_exc
from cvat_sdk.core.downloading import Downloader

from cvat_bridge import records
from cvat_bridge.client import Connection, CvatError, CvatNotFound, retry_call, translate_errors
from cvat_bridge.progress import ProgressFn, StageProgress, report as report_progress
from cvat_bridge.spec import TAG_LABEL, attribute_defaults
from data.datumaro_io import ImportReport, ParsedItem, import_datumaro

log = logging.getLogger(__name__)

EXPORT_FORMAT = "Datumaro 1.0"
HUMAN_SOURCES = frozenset({"manual", "semi-auto"})
RETRACTED_REF = "retracted"


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
    deleted_frames: list[int] = field(default_factory=list)

    @property
    def tagged(self) -> int:
        return sum(j.tagged for j in self.jobs)

    @property
    def progress(self) -> float:
        live = self.size - len(self.deleted_frames)
        return self.tagged / live if live > 0 else 0.0

    @property
    def completed_jobs(self) -> int:
        return sum(1 for j in self.jobs if j.state == "completed")

    def summary(self) -> str:
        if not self.exists:
            return (f"task #{self.task_id} (round {self.round_number}): deleted on the server; "
                    f"`cvat forget --task {self.task_id}` drops it from this workspace")
        gone = (f", {len(self.deleted_frames)} frame(s) deleted in CVAT "
                f"({', '.join(map(str, self.deleted_frames))})" if self.deleted_frames else "")
        live = self.size - len(self.deleted_frames)
        return (f"task #{self.task_id} (round {self.round_number}) {self.name!r}: "
                f"{self.tagged}/{live} tagged ({self.progress:.0%}), "
                f"{self.completed_jobs}/{len(self.jobs)} jobs completed{gone}")


@dataclass
class PullResult:
    task_id: int
    round_number: int | None
    report: ImportReport
    missing: bool = False
    # frames whose tags came from people / reviewed pre-labels / unreviewed pre-labels
    sources: dict[str, int] = field(default_factory=dict)
    deleted_frames: list[tuple[str, int, int]] = field(default_factory=list)   # item, image, frame
    removed_tags: list[tuple[str, int]] = field(default_factory=list)          # item, image
    retracted: list[tuple[str, int]] = field(default_factory=list)
    defaults_dropped: int = 0

    def summary(self) -> str:
        head = f"task #{self.task_id} (round {self.round_number})"
        if self.missing:
            return (f"{head}: WARNING deleted on the server, skipped; "
                    f"`cvat forget --task {self.task_id}` drops it from this workspace")
        return f"{head}: {self.report.summary()}"

    def details(self) -> list[str]:
        lines = []
        if self.sources:
            lines.append("  tags: " + ", ".join(f"{k} {v}" for k, v in self.sources.items()))
        if self.report.held:
            lines.append(f"  {len(self.report.held)} pre-filled tag(s) not reviewed yet were "
                         "NOT stored (correct them in CVAT or mark their job completed)")
        if self.defaults_dropped:
            lines.append(f"  {self.defaults_dropped} value(s) equal to the attribute's CVAT "
                         "default were dropped from pre-filled tags (CVAT fills left-out "
                         "attributes with it)")
        if self.deleted_frames:
            lines.append(f"  {len(self.deleted_frames)} frame(s) deleted in CVAT (not in the "
                         "export): " + ", ".join(f"{i} (frame {f})"
                                                 for i, _, f in self.deleted_frames[:20]))
        if self.removed_tags and not self.retracted:
            lines.append(f"  {len(self.removed_tags)} tag(s) deleted in CVAT after an earlier "
                         "pull still have their label: " + ", ".join(
                             i for i, _ in self.removed_tags[:20])
                         + f"; `cvat pull --task {self.task_id} --retract-deleted` retracts them")
        if self.retracted:
            lines.append(f"  retracted {len(self.retracted)} label(s) whose tag was deleted in "
                         "CVAT (the label history keeps them)")
        return lines + self.report.details()

    def to_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "round": self.round_number, "missing": self.missing,
                "sources": dict(self.sources), "defaults_dropped": self.defaults_dropped,
                "deleted_frames": [{"item": i, "image_id": n, "frame": f}
                                   for i, n, f in self.deleted_frames],
                "removed_tags": [{"item": i, "image_id": n} for i, n in self.removed_tags],
                "retracted": [{"item": i, "image_id": n} for i, n in self.retracted],
                **self.report.to_dict()}


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


def _deleted_frames(task: Any) -> list[int]:
    return sorted(int(f) for f in (getattr(task.get_meta(), "deleted_frames", None) or []))


def task_status(conn: Connection, store: Any, task_id: int | None = None) -> list[TaskStatus]:
    """Per pushed task: its jobs' states and how many frames carry a tag.

    Frames deleted in CVAT count neither as tagged nor in the size, as in the export pull
    reads (so status and pull agree).
    """
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
            status.deleted_frames = _deleted_frames(task)
            gone = set(status.deleted_frames)
            tagged_frames = {t.frame for t in task.get_annotations().tags} - gone
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


def _running_export(conn: Connection, task_id: int) -> Any | None:
    """The export request of ours already queued/running for this task (trace j)."""
    requests, _ = conn.client.api_client.requests_api.list(
        action="export", target="task", task_id=task_id)
    for rq in requests.results:
        op = rq.operation
        if str(op.type) == "export:annotations" and str(op.format) == EXPORT_FORMAT \
                and int(op.task_id or -1) == task_id:
            return rq
    return None


def _export(conn: Connection, task: Any, dest: Path, progress: ProgressFn | None,
            span: tuple[float, float]) -> Path:
    """Export and download; a 409 means our earlier request still runs: wait on that one.

    After ``--wait 5 pull`` timed out, CVAT keeps the export queued and answers the same POST
    with 409 "Export request is being processed"; we find that request through
    ``GET /api/requests?action=export&target=task&task_id=N`` and wait for it.
    """
    lo, hi = span

    def attempt() -> Path:
        dest.unlink(missing_ok=True)
        pbar = StageProgress(progress, lo + (hi - lo) * 0.5, hi, f"downloading task {task.id}")
        try:
            task.export_dataset(EXPORT_FORMAT, dest, include_images=False, pbar=pbar)
            return dest
        except api_exc.ApiException as exc:
            if exc.status != 409:
                raise
        running = _running_export(conn, int(task.id))
        if running is None:
            raise CvatError(f"CVAT says an export of task {task.id} is being processed, but "
                            "lists no such request; try again in a minute")
        log.warning("an export of task %s is already running on the server (%s); waiting for it",
                    task.id, running.id)
        report_progress(progress, lo + (hi - lo) * 0.25,
                        f"waiting for the running export of task {task.id}")
        request, _ = conn.client.wait_for_completion(running.id)
        dest.unlink(missing_ok=True)
        Downloader(conn.client).download_file(request.result_url, dest, pbar=pbar)
        return dest

    with translate_errors(conn.host, f"export task {task.id} as {EXPORT_FORMAT}"):
        return retry_call(attempt, conn.settings, f"export of task {task.id}")


def _prepare(conn: Connection, store: Any, rec: records.TaskRecord, tmp: Path,
             progress: ProgressFn | None, span: tuple[float, float]) -> dict[str, Any]:
    """Network half of a pull: jobs, tag sources, deleted frames and the Datumaro export."""
    task = _task_or_missing(conn, rec.task_id)
    if task is None:
        log.warning("task %s (round %s) no longer exists on %s; skipped", rec.task_id,
                    rec.round_number, conn.host)
        return {"rec": rec, "missing": True}
    report_progress(progress, span[0], f"reading task {rec.task_id}")
    with translate_errors(conn.host, f"read the jobs and tags of task {rec.task_id}"):
        jobs = [(int(j.start_frame), int(j.stop_frame), int(j.id),
                 j.assignee.username if getattr(j, "assignee", None) else None, str(j.state))
                for j in task.get_jobs()]
        labels = task.get_labels()
        tag_label_ids = {int(lb.id) for lb in labels if str(lb.name).lower() == TAG_LABEL}
        sources: dict[int, set[str]] = {}
        for t in task.get_annotations().tags:
            if int(t.label_id) in tag_label_ids:
                sources.setdefault(int(t.frame), set()).add(str(t.source or "manual"))
        deleted = _deleted_frames(task)
    path = _export(conn, task, tmp / f"task_{rec.task_id}_datumaro.zip", progress, span)
    return {"rec": rec, "missing": False, "jobs": jobs, "path": path, "sources": sources,
            "defaults": attribute_defaults(labels), "deleted": deleted}


def _import(conn: Connection, ws: Any, store: Any, prepared: dict[str, Any],
            retract_deleted: bool) -> PullResult:
    """Store half of a pull: map items to images and write labels with provenance."""
    rec: records.TaskRecord = prepared["rec"]
    if prepared["missing"]:
        return PullResult(task_id=rec.task_id, round_number=rec.round_number, missing=True,
                          report=ImportReport(source=f"{conn.host} task {rec.task_id}"))
    jobs = prepared["jobs"]
    sources: dict[int, set[str]] = prepared["sources"]
    defaults = {a: d for a, d in prepared["defaults"].items() if d}
    item_map: dict[str, int] = {}
    frame_of: dict[str, int] = {}
    rows = records.items(store, rec)
    for image_id, frame, item_name in rows:
        stem = Path(item_name).stem
        item_map[stem] = image_id
        frame_of[stem] = frame

    def frame_for(item: ParsedItem) -> int | None:
        return item.frame if item.frame is not None else frame_of.get(item.id)

    def job_for(item: ParsedItem) -> tuple[int | None, str | None, str | None]:
        frame = frame_for(item)
        for lo, hi, jid, who, state in jobs:
            if frame is not None and lo <= frame <= hi:
                return jid, who, state
        return None, None, None

    def ref(item: ParsedItem) -> str:
        jid = job_for(item)[0]
        return f"task:{rec.task_id}/job:{jid if jid is not None else '?'}"

    result = PullResult(task_id=rec.task_id, round_number=rec.round_number,
                        report=ImportReport(source=""))
    counts = {"by people": 0, "pre-filled, reviewed": 0, "pre-filled, not reviewed": 0}

    def review(item: ParsedItem, values: dict[str, str]) -> tuple[dict[str, str] | None, str]:
        frame = frame_for(item)
        made_by = sources.get(frame, set()) if frame is not None else set()
        if not made_by or made_by & HUMAN_SOURCES:
            counts["by people"] += 1
            return values, ""
        jid, _, state = job_for(item)
        if state != "completed":
            counts["pre-filled, not reviewed"] += 1
            return None, (f"pre-filled by the model (source {'/'.join(sorted(made_by))}) and "
                          f"not reviewed: job #{jid} is {state!r}, not 'completed'")
        counts["pre-filled, reviewed"] += 1
        kept = {a: v for a, v in values.items() if defaults.get(a) != v}
        result.defaults_dropped += len(values) - len(kept)
        return kept, ""

    report = import_datumaro(ws, prepared["path"], source="cvat", store=store, item_map=item_map,
                             source_ref=ref, annotator=lambda it: job_for(it)[1],
                             round_id=rec.round_id, review=review)
    report.source = f"{conn.host} task {rec.task_id}"
    result.report = report
    result.sources = {k: v for k, v in counts.items() if v}

    deleted = set(prepared["deleted"])
    result.deleted_frames = [(Path(name).stem, image_id, frame)
                             for image_id, frame, name in rows if frame in deleted]
    prefix = f"task:{rec.task_id}/"
    for item_id in report.unlabelled:
        image_id = item_map.get(item_id)
        current = store.current_label(image_id) if image_id is not None else None
        if current is not None and current.values and current.source == "cvat" \
                and (current.source_ref or "").startswith(prefix):
            result.removed_tags.append((item_id, image_id))
    if retract_deleted:
        for item_id, image_id in result.removed_tags:
            store.add_label(image_id, {}, source="cvat", source_ref=prefix + RETRACTED_REF,
                            round_id=rec.round_id)
            result.retracted.append((item_id, image_id))
    return result


def pull(conn: Connection, ws: Any, store: Any, task_id: int | None = None, *,
         retract_deleted: bool = False, progress: ProgressFn | None = None) -> list[PullResult]:
    """Pull every pushed task (or one), all or nothing; deleted tasks are skipped.

    All exports are downloaded first; only then are the labels of every task written, in one
    transaction, so a failure (network, a malformed export) leaves the store unchanged.
    ``retract_deleted`` retracts labels whose tag was deleted in CVAT after an earlier pull.
    """
    selected = _selected(store, conn, task_id)
    if not selected:
        raise CvatError(f"nothing to pull: no task was pushed from this workspace to {conn.host}")
    n = len(selected)
    with tempfile.TemporaryDirectory(prefix="cargroup-pull-") as tmp:
        prepared = [_prepare(conn, store, rec, Path(tmp), progress,
                             (0.05 + 0.85 * k / n, 0.05 + 0.85 * (k + 1) / n))
                    for k, rec in enumerate(selected)]
        report_progress(progress, 0.92, "writing labels")
        with store.transaction():
            results = [_import(conn, ws, store, p, retract_deleted) for p in prepared]
    report_progress(progress, 1.0, "pulled")
    return results


def forget(store: Any, host: str, task_id: int) -> records.TaskRecord:
    """Drop a pushed task's record (e.g. deleted in CVAT); its labels stay in the store."""
    rec = records.task(store, host, task_id)
    if rec is None:
        raise CvatError(f"task {task_id} was not pushed from this workspace to {host}")
    records.forget_task(store, rec)
    return rec


__all__ = ["JobStatus", "TaskStatus", "PullResult", "task_status", "pull", "forget"]
