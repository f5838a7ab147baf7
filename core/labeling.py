"""The built-in annotator's logic: which image comes next, what to pre-select, how a label is saved.

Kept out of the Streamlit page so the rules are testable and the page only draws. An image counts
as *done* for a batch once it has any label version, even an empty one: marking every attribute
"unsure" stores an empty (all-missing) label, which the trainer ignores but which stops the image
from being served again. Saving again later adds a new version (the store never overwrites).

Several annotators (core/claims.py, core/assignment.py, core/double.py): with a name or a
signed-in principal, :func:`next_image_id` claims what it serves, serves only rounds open to that
person, and serves double-labelled images a second time to someone else; :func:`save_label`
refuses rounds handed to others and images someone else holds, stores a second label without
touching the current one, and releases the claim.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image, ImageOps

from core.access import Principal, audit, authorize
from core.assignment import require_image, require_round, visible_round_ids
from core.claims import FIRST_PASS, SECOND_PASS, check_free, claim_next, live_claims, release
from core.double import SECOND, label_kind
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
    second_label: bool = False  # an independent second label: the first one is not shown

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


def batches(store: ProjectStore, *, principal: Principal | None = None) -> list[BatchInfo]:
    """Every round with its size and how many of its images have a saved label.

    With a ``principal``: only the rounds open to them (core/assignment.py).
    One indexed query (see ``ProjectStore.round_progress``): the Label page runs it on every
    load, so its cost must follow the rounds' sizes, not the pool's.
    """
    infos = [_info(r) for r in store.round_progress()]
    visible = visible_round_ids(store, principal) if principal is not None else None
    return infos if visible is None else [b for b in infos if b.round_id in visible]


def batch_info(store: ProjectStore, batch_number: int) -> BatchInfo:
    rows = store.round_progress(batch_number)
    if not rows:
        raise ValueError(f"no batch {batch_number}")
    return _info(rows[0])


def default_batch(store: ProjectStore, infos: list[BatchInfo] | None = None) -> BatchInfo | None:
    """The batch to label now: an evaluation batch with unlabelled images first (the evaluation
    set is labelled before any training batch), else the newest batch that still has unlabelled
    images, else the newest batch, else None."""
    infos = batches(store) if infos is None else infos
    for info in infos:
        if info.kind == EVAL_ROUND_KIND and info.pending:
            return info
    for info in reversed(infos):
        if info.pending:
            return info
    return infos[-1] if infos else None


def next_image_id(store: ProjectStore, batch_number: int, *, annotator: str = "",
                  principal: Principal | None = None,
                  skip: set[int] | frozenset[int] = frozenset(),
                  now: float | None = None) -> int | None:
    """The image to label next in the batch, not in ``skip``; None when none is left for you.

    With an ``annotator`` name or a signed-in ``principal`` (which wins) the image is claimed for
    that person (core/claims.py): images others hold are not served, a double-labelled image is
    served again to a second person, and a round handed to others is refused. Without either,
    the highest-ranked unlabelled image nobody holds is returned and nothing is claimed.
    """
    if principal is None and not annotator.strip():
        held = {c.image_id for c in live_claims(store, now=now) if c.pass_ == FIRST_PASS}
        for image_id in store.round_unvisited(batch_number):
            if image_id not in skip and image_id not in held:
                return image_id
        return None
    who = _labeller(store, principal, annotator, "label")
    round_id = int(store.round(batch_number)["id"])
    require_round(store, who, round_id)
    claim = claim_next(store, round_id, who.user, skip=skip, now=now)
    return None if claim is None else claim.image_id


def _labeller(store: ProjectStore, principal: Principal | None, annotator: str,
              action: str) -> Principal:
    """Who labels: the signed-in principal, else the typed name with the resolved role."""
    who = authorize(store, principal, action)
    if principal is not None:
        return principal
    name = annotator.strip()
    if not name:
        raise ValueError("enter your name as annotator before saving labels")
    return Principal(name, who.role)


def held_by_others(store: ProjectStore, batch_number: int, annotator: str) -> int:
    """How many of the batch's images others are labelling now (claimed, not yet saved)."""
    round_id = int(store.round(batch_number)["id"])
    return sum(1 for c in live_claims(store, round_id) if c.annotator != annotator)


def skip_image(store: ProjectStore, image_id: int, *, annotator: str = "",
               principal: Principal | None = None) -> None:
    """Skip an image: give up its claim so someone else can label it."""
    if principal is None and not annotator.strip():
        return
    who = _labeller(store, principal, annotator, "skip")
    release(store, image_id, who.user)


def task_for(store: ProjectStore, image_id: int, batch_number: int, *,
             annotator: str = "") -> LabelTask:
    """The Label page's view of one image: saved label, model predictions, pre-selection.

    For ``annotator``'s independent second label the first annotator's label is not shown (nor
    pre-selected): only their own second label, once saved.
    """
    info = batch_info(store, batch_number)
    rank = store.round_rank(batch_number, image_id)
    current_version = store.current_label(image_id)
    second = bool(annotator) and label_kind(store, image_id, annotator) == SECOND
    if second:
        own = [v for v in store.label_history(image_id)
               if v.annotator == annotator and v.kind == SECOND]
        current_version = own[-1] if own else None
    current = dict(current_version.values) if current_version else {}
    model = store.current_model()
    predictions = store.predictions(model["id"], ids=[image_id]).get(image_id, {}) if model else {}
    suggestion = {a: v for a, (v, _p) in predictions.items()}
    if current_version is not None:
        suggestion = dict(current)  # a human label wins; unsure attributes stay empty
    return LabelTask(image=store.image(image_id), batch=info,
                     position=(rank if rank is not None else 0) + 1,
                     current=current, labelled_before=current_version is not None,
                     predictions=predictions, suggestion=suggestion, second_label=second)


def save_label(store: ProjectStore, schema: LabelSchema, image_id: int,
               choices: Mapping[str, str | None], *, annotator: str = "",
               round_id: int | None = None, principal: Principal | None = None) -> int:
    """Store the annotator's choices as a new label version; ``None`` means unsure (missing).

    Values go through the schema, so a stale page cannot store a class that no longer exists.
    Returns the new version number. With a signed-in ``principal`` the annotator is that user
    (identity comes from the sign-in, not from a typed name); the save goes to the audit trail.
    """
    who = _labeller(store, principal, annotator, "label")
    values = schema.normalise_label({a: v for a, v in choices.items() if v},
                                    item=store.image(image_id).name)
    require_image(store, who, image_id)
    with store.transaction():  # the claim check, the save and the release see one database
        kind = label_kind(store, image_id, who.user)
        check_free(store, image_id, SECOND_PASS if kind == SECOND else FIRST_PASS, who.user)
        version = store.add_label(image_id, values, source="builtin", annotator=who.user,
                                  round_id=round_id, skip_if_same=False, kind=kind)
        assert version is not None
        release(store, image_id, who.user)
        audit(store, who, "label", {"image_id": image_id, "version": version, "values": values,
                                    "round_id": round_id, "kind": kind})
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

