"""Push a labeling round to CVAT as one task (split into jobs), optionally pre-filled.

Steps: check the project's label spec (refuse on mismatch), stage the round's images under
unique names (``<image id>_<name>``; CVAT names items by base name), create the task in the
project and upload the files through cvat-sdk (``segment_size`` -> jobs, ``chunk_size``), read
the frame list back to learn which frame holds which image, optionally PUT the model's
predictions as tags, and record task <-> images <-> round in the store. A round already pushed
to this server is refused unless ``force``. If anything fails after the task was created, the
task is deleted again so no half-made task is left behind.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvat_sdk.api_client import models

from data.schema import LabelSchema
from cvat_bridge import records
from cvat_bridge.client import Connection, CvatError, translate_errors
from cvat_bridge.progress import ProgressFn, StageProgress, report
from data.naming import upload_name
from cvat_bridge.spec import TAG_LABEL, ensure_project, default_project_name

log = logging.getLogger(__name__)


class PushError(CvatError):
    """The round cannot be pushed (already pushed, empty, missing files, no predictions)."""


@dataclass
class PushResult:
    task_id: int
    task_name: str
    project_id: int
    project_created: bool
    round_number: int
    images: int
    jobs: list[dict[str, int]] = field(default_factory=list)
    prefilled: int = 0
    url: str = ""
    skipped_labelled: int = 0

    def summary(self) -> str:
        pre = f", {self.prefilled} tags pre-filled from predictions" if self.prefilled else ""
        if self.skipped_labelled:
            pre += f" ({self.skipped_labelled} already labelled images left out)"
        return (f"round {self.round_number}: task #{self.task_id} {self.task_name!r} with "
                f"{self.images} images in {len(self.jobs)} job(s) in project #{self.project_id}"
                f"{pre}; {self.url}")


def _image_file(ws: Any, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else Path(ws.root) / p


def _stage(ws: Any, store: Any, image_ids: list[int], dest: Path) -> dict[str, int]:
    """Hard-link (or copy) each image as <id>_<name>; returns upload name -> image id.

    A symlink would not do: cvat-sdk resolves paths, and CVAT would see the original name.
    """
    by_name: dict[str, int] = {}
    missing = []
    for rec in store.images(image_ids):
        src = _image_file(ws, rec.path)
        if not src.is_file():
            missing.append(f"{rec.id}: {src}")
            continue
        name = upload_name(rec.id, rec.name)
        target = dest / name
        try:
            os.link(src, target)
        except OSError:
            shutil.copyfile(src, target)
        by_name[name] = rec.id
    if missing:
        raise PushError(f"{len(missing)} image file(s) are missing, nothing was pushed: "
                        + "; ".join(missing[:5]))
    return by_name


def _prefill_tags(schema: LabelSchema, task_labels: list[Any], frames: dict[int, int],
                  predictions: dict[int, dict[str, tuple[str, float]]]) -> list[Any]:
    label = next(lb for lb in task_labels if lb.name == TAG_LABEL)
    spec_ids = {a.name: a.id for a in label.attributes}
    tags = []
    for frame, image_id in sorted(frames.items()):
        pred = predictions.get(image_id)
        if not pred:
            continue
        attrs = []
        for attr in schema.attributes:
            if attr in pred and pred[attr][0] in schema.classes[attr]:
                attrs.append(models.AttributeValRequest(spec_id=spec_ids[attr], value=pred[attr][0]))
        if attrs:
            tags.append(models.LabeledImageRequest(label_id=label.id, frame=frame,
                                                   source="auto", attributes=attrs))
    return tags


def push_round(conn: Connection, ws: Any, store: Any, round_number: int, *,
               segment_size: int | None = None, chunk_size: int | None = None,
               prefill: bool = False, model_id: int | None = None, force: bool = False,
               image_quality: int = 95, project_name: str | None = None,
               include_labelled: bool = False,
               progress: ProgressFn | None = None) -> PushResult:
    """Create a CVAT task from round ``round_number``'s queued images; see module docstring.

    Images of the round that already have a label are left out unless ``include_labelled``
    (annotators should not redo work); ``PushResult.skipped_labelled`` counts them.
    """
    schema: LabelSchema = ws.schema
    rnd = store.round(round_number)
    queued = [int(r["image_id"]) for r in store.round_items(round_number)]
    if not queued:
        raise PushError(f"round {round_number} has no queued images")
    labelled = set() if include_labelled else store.labelled_ids()
    image_ids = [i for i in queued if i not in labelled]
    if not image_ids:
        raise PushError(f"all {len(queued)} images of round {round_number} are already labelled "
                        "(use include_labelled / --include-labelled to send them anyway)")
    earlier = records.tasks_for_round(store, conn.host, rnd["id"])
    if earlier and not force:
        ids = ", ".join(f"#{t.task_id}" for t in earlier)
        raise PushError(f"round {round_number} was already pushed to {conn.host} as task {ids}; "
                        "pull it, or push again with --force to create another task (a task "
                        f"deleted in CVAT: `cvat forget --task {earlier[0].task_id}` first)")
    if segment_size is not None and segment_size < 1:
        raise PushError("segment size must be at least 1")
    if chunk_size is not None and chunk_size < 1:
        raise PushError("chunk size must be at least 1")

    predictions: dict[int, dict[str, tuple[str, float]]] = {}
    if prefill:
        if model_id is None:
            current = store.current_model()
            model_id = current["id"] if current else None
        if model_id is None:
            raise PushError("--prefill needs a trained model with predictions; none is current")
        predictions = store.predictions(model_id, image_ids)
        if not predictions:
            raise PushError(f"model #{model_id} has no predictions for round {round_number}; "
                            "score the pool first")

    chosen = project_name or conn.settings.project_name
    report(progress, 0.02, "checking the CVAT project")
    project = ensure_project(conn, store, schema,
                             chosen or default_project_name(Path(ws.root).name),
                             named=bool(chosen))
    name = f"cargroup round {round_number} ({len(image_ids)} images)"
    if prefill:
        name += f" - PRE-FILLED with model #{model_id} predictions, please correct"
    spec: dict[str, Any] = {"name": name, "project_id": project.id}
    if segment_size:
        spec["segment_size"] = int(segment_size)
    params: dict[str, Any] = {"image_quality": int(image_quality), "sorting_method": "natural"}
    if chunk_size:
        params["chunk_size"] = int(chunk_size)

    client = conn.client
    with tempfile.TemporaryDirectory(prefix="cargroup-push-") as tmp:
        by_name = _stage(ws, store, image_ids, Path(tmp))
        files = [Path(tmp) / n for n in sorted(by_name)]
        task = None
        try:
            with translate_errors(conn.host, f"create the task for round {round_number}"):
                task = client.tasks.create(spec)
                # upload 5-85 %: the SDK reports the bytes it sends
                task.upload_data(files, params=params,
                                 pbar=StageProgress(progress, 0.05, 0.85, "uploading images"))
                report(progress, 0.88, "reading the frame list")
                frames_meta = task.get_meta().frames
                frame_of = {}
                for frame, meta in enumerate(frames_meta):
                    image_id = by_name.get(Path(meta.name).name)
                    if image_id is None:
                        raise PushError(f"CVAT reports frame {frame} as {meta.name!r}, "
                                        "which was not uploaded")
                    frame_of[frame] = image_id
                if len(frame_of) != len(by_name):
                    raise PushError(f"CVAT holds {len(frame_of)} frames, {len(by_name)} were sent")
                prefilled = 0
                if prefill:
                    report(progress, 0.92, "pre-filling tags with the model's predictions")
                    tags = _prefill_tags(schema, task.get_labels(), frame_of, predictions)
                    if tags:
                        task.set_annotations(models.LabeledDataRequest(tags=tags))
                    prefilled = len(tags)
                jobs = sorted(task.get_jobs(), key=lambda j: j.start_frame)
        except BaseException:
            if task is not None:
                _remove_quietly(conn, task)
            raise
    names = {image_id: n for n, image_id in by_name.items()}
    records.add_task(store, host=conn.host, task_id=int(task.id), round_id=rnd["id"], name=name,
                     prefilled=bool(prefill),
                     rows=[(image_id, frame, names[image_id]) for frame, image_id in frame_of.items()])
    return PushResult(
        task_id=int(task.id), task_name=name, project_id=project.id,
        project_created=project.created, round_number=round_number, images=len(frame_of),
        jobs=[{"id": int(j.id), "start_frame": int(j.start_frame),
               "stop_frame": int(j.stop_frame)} for j in jobs],
        prefilled=prefilled, url=f"{conn.host.rstrip('/')}/tasks/{int(task.id)}",
        skipped_labelled=len(queued) - len(image_ids))


def _remove_quietly(conn: Connection, task: Any) -> None:
    try:
        with translate_errors(conn.host, f"delete half-made task {task.id}"):
            task.remove()
        log.warning("deleted half-made CVAT task #%s after a failed push", task.id)
    except CvatError as exc:
        log.error("could not delete half-made CVAT task #%s: %s", task.id, exc)
