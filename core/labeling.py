"""The built-in annotator's logic: which image comes next, what to pre-select, how a label is saved.

Kept out of the Streamlit page so the rules are testable and the page only draws. An image counts
as *done* for a batch once it has any label version, even an empty one: marking every attribute
"unsure" stores an empty (all-missing) label, which the trainer ignores but which stops the image
from being served again. Saving again later adds a new version (the store never overwrites).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image, ImageOps

from core.access import Principal, audit, authorize
from data.evalset import EVAL_ROUND_KIND
from data.cache import ImageCache
from data.schema import LabelSchema
from data.store import ImageRecord, ProjectStore
from data.workspace import Workspace


@dataclass(frozen=True)
class BatchInfo:
    """One labeling batch (a round) and how far through it the annotators are."""

    number: int
    round_id: int
    kind: str
    strategy: str | None
    total: int
    done: int

    @property
    def pending(self) -> int:
        return self.total - self.done


@dataclass
class LabelTask:
    """Everything the Label page shows for one image."""

    image: ImageRecord
    batch: BatchInfo
    position: int                              # 1-based rank within the batch
    current: dict[str, str]                    # the saved label (may be partial or empty)
    labelled_before: bool                      # has any saved version
    predictions: dict[str, tuple[str, float]]  # {attribute: (class, probability)} of the model
    suggestion: dict[str, str] = field(default_factory=dict)  # what to pre-select

    @property
    def preselected_from_model(self) -> set[str]:
        """Attributes whose pre-selection is the model's guess, not a saved human label."""
        return {a for a in self.suggestion if a not in self.current}


def _info(row: Mapping[str, object]) -> BatchInfo:
    return BatchInfo(number=int(row["number"]), round_id=int(row["id"]), kind=str(row["kind"]),
                     strategy=row["strategy"], total=int(row["total"]),  # type: ignore[arg-type]
                     done=int(row["done"]))  # type: ignore[arg-type]


def batch_title(info: BatchInfo) -> str:
    """How the Label page names a batch: "evaluation set", the strategy, or the kind."""
    if info.kind == EVAL_ROUND_KIND:
        return "evaluation set"
    return info.strategy or info.kind


def batches(store: ProjectStore) -> list[BatchInfo]:
    """Every round with its size and how many of its images have a saved label.

    One indexed query (see ``ProjectStore.round_progress``): the Label page runs it on every
    load, so its cost must follow the rounds' sizes, not the pool's.
    """
    return [_info(r) for r in store.round_progress()]


def batch_info(store: ProjectStore, batch_number: int) -> BatchInfo:
    rows = store.round_progress(batch_number)
    if not rows:
        raise ValueError(f"no batch {batch_number}")
    return _info(rows[0])


def unfinished_rounds(store: ProjectStore,
                      infos: list[BatchInfo] | None = None) -> list[BatchInfo]:
    """Rounds that still have images without a saved label, in the order to label them:
    evaluation rounds first (the evaluation set is labelled before any training batch), then
    the oldest first, so a newer batch never strands an older one half-done."""
    infos = batches(store) if infos is None else infos
    return sorted((b for b in infos if b.pending),
                  key=lambda b: (b.kind != EVAL_ROUND_KIND, b.number))


def unfinished_text(open_rounds: list[BatchInfo]) -> str:
    """'round 3 still has 40 of 100 images to label' (several rounds: summed, all named)."""
    pending = sum(b.pending for b in open_rounds)
    total = sum(b.total for b in open_rounds)
    if len(open_rounds) == 1:
        names = f"round {open_rounds[0].number}"
    else:
        names = "rounds " + ", ".join(str(b.number) for b in open_rounds)
    return f"{names} still {'has' if len(open_rounds) == 1 else 'have'} {pending} of {total} " \
           "images to label"


def default_batch(store: ProjectStore, infos: list[BatchInfo] | None = None) -> BatchInfo | None:
    """The batch to label now: the first of :func:`unfinished_rounds` (an evaluation batch,
    else the OLDEST batch with unlabelled images), else the newest batch, else None."""
    infos = batches(store) if infos is None else infos
    open_ = unfinished_rounds(store, infos)
    if open_:
        return open_[0]
    return infos[-1] if infos else None


def next_image_id(store: ProjectStore, batch_number: int, *,
                  skip: set[int] | frozenset[int] = frozenset()) -> int | None:
    """The highest-ranked image of the batch with no saved label, not in ``skip``."""
    for image_id in store.round_unvisited(batch_number):
        if image_id not in skip:
            return image_id
    return None


def task_for(store: ProjectStore, image_id: int, batch_number: int) -> LabelTask:
    """The Label page's view of one image: saved label, model predictions, pre-selection."""
    info = batch_info(store, batch_number)
    rank = store.round_rank(batch_number, image_id)
    current_version = store.current_label(image_id)
    current = dict(current_version.values) if current_version else {}
    model = store.current_model()
    predictions = store.predictions(model["id"], ids=[image_id]).get(image_id, {}) if model else {}
    suggestion = {a: v for a, (v, _p) in predictions.items()}
    if current_version is not None:
        suggestion = dict(current)  # a human label wins; unsure attributes stay empty
    return LabelTask(image=store.image(image_id), batch=info,
                     position=(rank if rank is not None else 0) + 1,
                     current=current, labelled_before=current_version is not None,
                     predictions=predictions, suggestion=suggestion)


def save_label(store: ProjectStore, schema: LabelSchema, image_id: int,
               choices: Mapping[str, str | None], *, annotator: str = "",
               round_id: int | None = None, principal: Principal | None = None) -> int:
    """Store the annotator's choices as a new label version; ``None`` means unsure (missing).

    Values go through the schema, so a stale page cannot store a class that no longer exists.
    Returns the new version number. With a signed-in ``principal`` the annotator is that user
    (identity comes from the sign-in, not from a typed name); the save goes to the audit trail.
    """
    who = authorize(store, principal, "label")
    annotator = who.user if principal is not None else annotator.strip()
    if not annotator:
        raise ValueError("enter your name as annotator before saving labels")
    values = schema.normalise_label({a: v for a, v in choices.items() if v},
                                    item=store.image(image_id).name)
    version = store.add_label(image_id, values, source="builtin", annotator=annotator,
                              round_id=round_id, skip_if_same=False)
    assert version is not None
    audit(store, Principal(annotator, who.role), "label",
          {"image_id": image_id, "version": version, "values": values, "round_id": round_id})
    return version


def load_display_image(ws: Workspace, image: ImageRecord) -> np.ndarray:
    """The image as RGB uint8 for display: the original file, else the cached copy."""
    path = Path(image.path)
    if not path.is_absolute():
        path = ws.root / path
    if path.is_file():
        try:
            with Image.open(path) as im:
                return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        except OSError:
            pass
    if image.cache_row is not None:
        return ImageCache(ws.cache_dir, ws.config.cache_size).read([image.cache_row])[0]
    raise FileNotFoundError(f"image {image.name} is missing on disk and not cached")

