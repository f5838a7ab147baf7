"""The built-in annotator's logic: which image comes next, what to pre-select, how a label is saved.

Kept out of the Streamlit page so the rules are testable and the page only draws. An image counts
as *done* for a batch once it has any label version, even an empty one: marking every attribute
"unsure" stores an empty (all-missing) label, which the trainer ignores but which stops the image
from being served again. Saving again later adds a new version (the store never overwrites).

Two rules against automation bias (issue 13):
- the model's answer is *pre-selected* only at or above a per-head confidence threshold
  (:data:`DEFAULT_PREFILL_THRESHOLD`, settable per workspace); below it the page shows it as a
  hint only, and each saved label records what was suggested and what the annotator did with it;
- "unsure" is a choice, never a default: an all-unsure save of a fresh image (nothing chosen) is
  refused unless it is confirmed (``confirm_all_unsure``).

Several annotators (core/claims.py, core/assignment.py, core/double.py): with a name or a
signed-in principal, :func:`next_image_id` claims what it serves, serves only rounds open to that
person, and serves double-labelled images a second time to someone else; :func:`save_label`
refuses rounds handed to others and images someone else holds, stores a second label without
touching the current one, and releases the claim.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps

from core.access import Principal, audit, authorize
from core.assignment import require_image, require_round, visible_round_ids
from core.claims import FIRST_PASS, SECOND_PASS, check_free, claim_next, live_claims, release
from core.double import SECOND, label_kind
from data.errors import UserError
from data.evalset import EVAL_ROUND_KIND
from data.cache import ImageCache
from data.schema import LabelSchema
from data.store import ImageRecord, ProjectStore
from data.workspace import Workspace, WorkspaceConfig

# Why 0.8: with 8-10 classes per head chance is 10-12 %, and issue 13 saw answers at 11-14 %
# pre-selected and accepted with one Enter. People keep a pre-filled answer far more often than
# they would pick it themselves (automation bias), so the model should pre-fill only where it is
# usually right: a calibrated head at >= 0.8 is wrong at most about 1 time in 5, and mostly
# much less. Below that the annotator's own look is the better default and the model's answer is
# shown as a hint. Fixing a wrong pre-selection costs one key press; an unnoticed one costs a
# wrong training label, so the default leans high. The Overview's acceptance/override table
# tells a project whether to move it (per head, in config.json ``prefill_thresholds``).
DEFAULT_PREFILL_THRESHOLD = 0.8

ALL_UNSURE_MESSAGE = ("nothing was chosen for this image: confirm that it is all unsure "
                      "(press Save & next again) or skip it")


@dataclass(frozen=True)
class Suggestion:
    """What the model suggested for one attribute of one image, as the page showed it."""

    attribute: str
    value: str
    probability: float
    preselected: bool   # True: pre-selected (>= threshold); False: shown as a hint only

    def outcome(self, chosen: str | None) -> str:
        """'accepted' (the annotator kept/picked it), 'changed' (another class) or 'unsure'."""
        if chosen is None:
            return "unsure"
        return "accepted" if chosen == self.value else "changed"


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
    thresholds: dict[str, float] = field(default_factory=dict)  # pre-fill threshold per head
    second_label: bool = False  # an independent second label: the first one is not shown

    @property
    def preselected_from_model(self) -> set[str]:
        """Attributes whose pre-selection is the model's guess, not a saved human label."""
        return {a for a in self.suggestion if a not in self.current}

    @property
    def hints(self) -> dict[str, tuple[str, float]]:
        """Model answers shown as a hint only (below the head's threshold, nothing pre-selected)."""
        return {a: p for a, p in self.predictions.items()
                if a not in self.preselected_from_model}

    @property
    def suggestions(self) -> list[Suggestion]:
        """Every model answer the page shows, pre-selected or as a hint (recorded with a save)."""
        pre = self.preselected_from_model
        return [Suggestion(a, v, float(p), a in pre) for a, (v, p) in self.predictions.items()]


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


def upcoming_ids(store: ProjectStore, batch_number: int, *,
                 skip: set[int] | frozenset[int] = frozenset(), n: int = 1) -> list[int]:
    """A read-only look at the next ``n`` unlabelled images of a batch (rank order, not in
    ``skip``), for prefetching their pixels. It hands nothing out: :func:`next_image_id` decides
    which image an annotator gets."""
    out: list[int] = []
    for image_id in store.round_unvisited(batch_number):
        if image_id not in skip:
            out.append(image_id)
            if len(out) >= n:
                break
    return out


def needs_all_unsure_confirmation(task: LabelTask, choices: Mapping[str, str | None]) -> bool:
    """Whether saving ``choices`` would store an all-unsure label on a fresh image."""
    return not task.labelled_before and not any(v for v in choices.values())


def prefill_thresholds(config: WorkspaceConfig, schema: LabelSchema) -> dict[str, float]:
    """The pre-fill threshold of every head: the workspace's own, else the default."""
    own = config.prefill_thresholds or {}
    return {a: float(own.get(a, DEFAULT_PREFILL_THRESHOLD)) for a in schema.attributes}


def set_prefill_thresholds(ws: Workspace, thresholds: Mapping[str, float], *,
                           principal: Principal | None = None) -> dict[str, float]:
    """Save per-head pre-fill thresholds in the workspace's config.json (maintainers only).

    A threshold is a probability in [0, 1]; 1.0 never pre-selects (hints only), 0.0 always does.
    """
    with ws.store() as store:
        who = authorize(store, principal, "configure_labelling")
        clean: dict[str, float] = {}
        for head, value in thresholds.items():
            if head not in ws.schema.attributes:
                raise UserError(f"unknown head {head!r}; the heads are "
                                f"{', '.join(ws.schema.attributes)}")
            if not 0.0 <= float(value) <= 1.0:
                raise UserError(f"the pre-fill threshold of {head} must be between 0 and 1")
            clean[head] = round(float(value), 4)
        config = ws.config
        config.prefill_thresholds = {**(config.prefill_thresholds or {}), **clean}
        config.save(ws.config_path)
        audit(store, who, "configure_labelling", {"prefill_thresholds": clean})
    return prefill_thresholds(ws.config, ws.schema)


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


def task_for(store: ProjectStore, image_id: int, batch_number: int,
             thresholds: Mapping[str, float] | None = None, *,
             annotator: str = "") -> LabelTask:
    """The Label page's view of one image: saved label, model predictions, pre-selection.

    A saved human label is pre-selected as it is. Otherwise a model answer is pre-selected only
    at or above its head's threshold (``thresholds``, default :data:`DEFAULT_PREFILL_THRESHOLD`);
    the others stay empty and the page shows them as hints.

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
    limits = {a: float((thresholds or {}).get(a, DEFAULT_PREFILL_THRESHOLD)) for a in predictions}
    suggestion = {a: v for a, (v, p) in predictions.items() if p >= limits[a]}
    if current_version is not None:
        suggestion = dict(current)  # a human label wins; unsure attributes stay empty
    return LabelTask(image=store.image(image_id), batch=info,
                     position=(rank if rank is not None else 0) + 1,
                     current=current, labelled_before=current_version is not None,
                     predictions=predictions, suggestion=suggestion, thresholds=limits,
                     second_label=second)


def save_label(store: ProjectStore, schema: LabelSchema, image_id: int,
               choices: Mapping[str, str | None], *, annotator: str = "",
               round_id: int | None = None, principal: Principal | None = None,
               suggestions: Sequence[Suggestion] = (), confirm_all_unsure: bool = False) -> int:
    """Store the annotator's choices as a new label version; ``None`` means unsure (missing).

    Values go through the schema, so a stale page cannot store a class that no longer exists.
    Returns the new version number. With a signed-in ``principal`` the annotator is that user
    (identity comes from the sign-in, not from a typed name); the save goes to the audit trail.

    "Unsure" is never a default: saving nothing at all for an image that has no label yet raises
    :class:`UserError` unless ``confirm_all_unsure`` (the annotator confirmed it, or chose
    unsure for every attribute). ``suggestions`` (the model answers the page showed) are stored
    with the version together with what the annotator did with each.
    """
    who = _labeller(store, principal, annotator, "label")
    values = schema.normalise_label({a: v for a, v in choices.items() if v},
                                    item=store.image(image_id).name)
    require_image(store, who, image_id)
    with store.transaction():  # the claim check, the save and the release see one database
        kind = label_kind(store, image_id, who.user)
        if kind == SECOND:   # fresh for this person: no second label of their own yet
            fresh = not any(v.annotator == who.user and v.kind == SECOND
                            for v in store.label_history(image_id))
        else:
            fresh = store.current_label(image_id) is None
        if not values and not confirm_all_unsure and fresh:
            # the guard lives here, not only on the page: a stale page or a second tab cannot
            # store an unconfirmed all-unsure label
            raise UserError(ALL_UNSURE_MESSAGE)
        check_free(store, image_id, SECOND_PASS if kind == SECOND else FIRST_PASS, who.user)
        version = store.add_label(image_id, values, source="builtin", annotator=who.user,
                                  round_id=round_id, skip_if_same=False, kind=kind)
        assert version is not None
        rows = [(sg.attribute, sg.value, sg.probability, sg.preselected,
                 sg.outcome(values.get(sg.attribute)))
                for sg in suggestions if sg.attribute in schema.attributes]
        if rows:
            store.add_label_suggestions(image_id, version, rows)
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

