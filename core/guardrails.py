"""What the Train page says about a model before anyone trusts it: where its weights came from,
which epoch was kept, whether the promotion gate made it current, and whether the validation and
evaluation sets are big enough to decide anything.

Why here: the page only draws; these facts come from the store (models table, labels) and must be
the same wherever they are shown, so they are computed and tested in one place.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from core.evalset import accuracy_interval
from core.promotion import PromotionDecision
from data.schema import LabelSchema
from data.store import ProjectStore
from models.weights_catalog import LABELS, WeightsOrigin

MIN_LABELLED_PER_HEAD = 30
"""Fewer labelled images than this for a head, in the val or the evaluation set, "cannot decide".
Why 30: below it one image moves a head's accuracy by more than 3 points, and the 95 % Wilson
interval of an accuracy near 50 % is over 30 points wide (n=29: 34 points). So the epoch kept
(lowest val loss) is picked largely by chance, and the promotion gate's comparison of two models
on the evaluation set is mostly noise. The Overview's stricter check (an interval under 10
points, :mod:`core.evalset`) says how big the set must grow to tell close models apart."""

ORIGIN_WORDS: dict[str, str] = {
    "imagenet": "ImageNet download (torchvision's download or cache)",
    "imagenet-file": "ImageNet weights from a local file",
    "imagenet-package": "ImageNet weights from an offline package",
    "checkpoint": "warm start from an earlier model",
    "random": "random init",
}


@dataclass(frozen=True)
class ModelProvenance:
    """Where a recorded model came from and which of its epochs was kept."""

    model_id: int
    backbone: str                    # readable name, e.g. "ResNet18"
    origin_kind: str | None          # WeightsOrigin.kind; None for models recorded before it
    origin: str                      # ORIGIN_WORDS[kind], or "not recorded"
    origin_detail: str
    kept_epoch: int | None           # the best-validation epoch whose weights were saved
    epochs_run: int | None
    best_val_loss: float | None
    is_current: bool
    promotion: PromotionDecision | None

    @property
    def random_init(self) -> bool:
        return self.origin_kind == "random"

    def kept_text(self) -> str:
        """e.g. 'epoch 3 of 5 (lowest validation loss 0.812)'."""
        if self.kept_epoch is None:
            return "not recorded"
        of = f" of {self.epochs_run}" if self.epochs_run else ""
        loss = "" if self.best_val_loss is None else f" (lowest validation loss {self.best_val_loss:.3f})"
        if self.kept_epoch == 0:  # models.train: the linear probe beat every fine-tuned epoch
            return f"epoch 0 of {self.epochs_run or '?'}: the linear-probe heads, before any " \
                   f"fine-tuning{loss}"
        return f"epoch {self.kept_epoch}{of}{loss}"


def model_provenance(model: Mapping[str, Any]) -> ModelProvenance:
    """:class:`ModelProvenance` of one models-table row (``ProjectStore.models()``)."""
    metrics = model.get("metrics") or {}
    val = metrics.get("val") if isinstance(metrics.get("val"), Mapping) else {}
    train = metrics.get("train") if isinstance(metrics.get("train"), Mapping) else {}
    params = model.get("params") or {}
    origin = WeightsOrigin.from_dict(model.get("weights_origin"))
    backbone = str(model.get("backbone") or params.get("backbone") or "resnet18")
    epochs_run = train.get("epochs_run")  # recorded since the gate; older models: unknown
    return ModelProvenance(
        model_id=int(model["id"]), backbone=LABELS.get(backbone, backbone),
        origin_kind=origin.kind if origin else None,
        origin=ORIGIN_WORDS.get(origin.kind, origin.kind) if origin else "not recorded",
        origin_detail=origin.detail if origin else "", kept_epoch=val.get("epoch"),
        epochs_run=int(epochs_run) if epochs_run is not None else None,
        best_val_loss=val.get("loss"), is_current=bool(model.get("is_current")),
        promotion=PromotionDecision.from_dict(metrics.get("promotion")))


def refused_model(models: list[Mapping[str, Any]]) -> ModelProvenance | None:
    """The newest model, when the promotion gate refused it and it is still not current."""
    ready = [m for m in models if m.get("status") == "ready"]
    if not ready:
        return None
    newest = model_provenance(max(ready, key=lambda m: int(m["id"])))
    if newest.is_current or newest.promotion is None or newest.promotion.promote:
        return None
    return newest


@dataclass(frozen=True)
class SmallSet:
    """One head of one set (val or evaluation) with too few labelled images to decide."""

    which: str            # "validation" or "evaluation"
    attribute: str
    labelled: int
    interval_width: float  # of an accuracy near 50 % on that many images

    def sentence(self) -> str:
        use = ("the epoch kept (lowest validation loss) is picked largely by chance"
               if self.which == "validation" else
               "the promotion gate's comparison with the current model is mostly noise")
        return (f"{self.which} set, {self.attribute}: only {self.labelled} labelled images "
                f"(fewer than {MIN_LABELLED_PER_HEAD}): an accuracy on so few images has a 95 % "
                f"interval {self.interval_width * 100:.0f} points wide, so {use}")


def _per_head(labels: Mapping[int, Mapping[str, str]], schema: LabelSchema) -> dict[str, int]:
    return {a: sum(1 for v in labels.values() if v.get(a) in schema.classes[a])
            for a in schema.attributes}


def small_sets(store: ProjectStore, schema: LabelSchema, *,
               minimum: int = MIN_LABELLED_PER_HEAD) -> list[SmallSet]:
    """Heads whose validation or evaluation images are too few to decide (see
    :data:`MIN_LABELLED_PER_HEAD`). The evaluation images are the evaluation set's labelled
    members, or the labelled test split when the project has no evaluation set."""
    out: list[SmallSet] = []
    members = set(store.eval_set_ids())
    if members:
        test = {i: v for i, v in store.current_labels().items() if i in members}
    else:
        test = store.current_labels(split="test")
    for which, labels in (("validation", store.current_labels(split="val")),
                          ("evaluation", test)):
        for attr, n in _per_head(labels, schema).items():
            if n < minimum:
                low, high = accuracy_interval(0.5, n)
                out.append(SmallSet(which, attr, n, high - low))
    return out


__all__ = ["MIN_LABELLED_PER_HEAD", "ModelProvenance", "model_provenance", "refused_model",
           "SmallSet", "small_sets"]
