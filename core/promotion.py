"""Promote a trained model to current, or roll back to the one that was current before it; and
the promotion gate training applies before making a new model current.

A maintainer-only service (see :mod:`core.access`): which model is current decides what ranks the
queue, what pre-fills labels and what gets exported, so changing it is checked and audited here.
The gate (:func:`decide_promotion`) is a pure function: a new model becomes current only if it is
not worse than the current one on the same evaluation images, or the user confirms it. Any ready
model can be made current again with :func:`promote` (one click on the Train page).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from core.access import Principal, audit, authorize
from data.accounts import audit_entries
from data.errors import UserError
from data.workspace import Workspace


def promote(ws: Workspace, model_id: int, *, principal: Principal | None = None,
            note: str | None = None) -> int:
    """Make ``model_id`` the current model; returns the id that was current before (or 0).

    Used for "Make it current anyway" (a model the gate refused) and for rolling back to any
    earlier ready model; ``note`` (e.g. "overrode the promotion gate") goes into the audit.
    """
    with ws.store() as store:
        who = authorize(store, principal, "promote")
        models = {m["id"]: m for m in store.models()}
        if model_id not in models:
            raise UserError(f"no model #{model_id}")
        if models[model_id]["status"] != "ready":
            raise UserError(f"model #{model_id} is {models[model_id]['status']}, not ready")
        before = store.current_model()
        store.set_current_model(model_id)
        details = {"model_id": model_id, "previous": before["id"] if before else None}
        if note:
            details["note"] = note
        audit(store, who, "promote", details)
    return before["id"] if before else 0


def rollback(ws: Workspace, *, principal: Principal | None = None) -> int:
    """Make the model that was current before the last promotion current again; returns its id.

    The previous model is the one named by the newest promotion or rollback in the audit trail,
    else the current model's parent (what it was warm-started from).
    """
    with ws.store() as store:
        who = authorize(store, principal, "rollback")
        current = store.current_model()
        if current is None:
            raise UserError("no current model to roll back from")
        target = None
        for entry in audit_entries(store):
            if entry["action"] in ("promote", "rollback") and \
                    entry["details"].get("model_id") == current["id"]:
                target = entry["details"].get("previous")
                break
        if target is None:
            target = current["parent_id"]
        ready = {m["id"] for m in store.models() if m["status"] == "ready"}
        if target is None or target not in ready:
            raise UserError(f"model #{current['id']} has no earlier model to roll back to")
        store.set_current_model(int(target))
        audit(store, who, "rollback", {"model_id": int(target), "previous": current["id"]})
    return int(target)


# -- the promotion gate ---------------------------------------------------------------------------
PROMOTION_TOLERANCE = 0.02
"""How far (as a fraction, 2 points) the new model's mean accuracy over heads may fall below the
current model's on the same evaluation images and still be made current. Why 2 points:
retraining on the same labels with another seed moves the mean-over-heads accuracy by about
1-3 points (std 0.2-2.8 points over 3 seeds in docs/BENCHMARKS.md's demo-pool AL table), so a
smaller drop is noise, not a worse model. A real regression, like the issue's colour head
falling from 50 % to 0 % (-17 points on a three-head mean), is far outside it."""


@dataclass(frozen=True)
class PromotionDecision:
    """Whether training's last step makes the new model current, and why in one sentence.

    ``new_accuracy``/``current_accuracy`` are mean accuracies over the heads both models were
    measured on, on the same evaluation images (None where nothing was compared).
    """

    promote: bool
    reason: str
    current_id: int | None = None
    new_accuracy: float | None = None
    current_accuracy: float | None = None
    per_head: dict[str, tuple[float, float]] = field(default_factory=dict)  # head: (current, new)
    tolerance: float = PROMOTION_TOLERANCE
    forced: bool = False
    compared: bool = False

    @property
    def delta(self) -> float | None:
        """New minus current mean accuracy (None when not compared)."""
        if self.new_accuracy is None or self.current_accuracy is None:
            return None
        return self.new_accuracy - self.current_accuracy

    def to_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "reason": self.reason, "current_id": self.current_id,
                "new_accuracy": self.new_accuracy, "current_accuracy": self.current_accuracy,
                "per_head": {a: list(v) for a, v in self.per_head.items()},
                "tolerance": self.tolerance, "forced": self.forced, "compared": self.compared}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "PromotionDecision | None":
        if not isinstance(d, Mapping) or "promote" not in d:
            return None
        return cls(promote=bool(d["promote"]), reason=str(d.get("reason", "")),
                   current_id=d.get("current_id"), new_accuracy=d.get("new_accuracy"),
                   current_accuracy=d.get("current_accuracy"),
                   per_head={a: (float(v[0]), float(v[1]))
                             for a, v in (d.get("per_head") or {}).items()},
                   tolerance=float(d.get("tolerance", PROMOTION_TOLERANCE)),
                   forced=bool(d.get("forced")), compared=bool(d.get("compared")))


def mean_accuracy(accuracy: Mapping[str, float | None]) -> float | None:
    """Mean over the heads that have an accuracy (None when none has)."""
    values = [float(v) for v in accuracy.values() if v is not None]
    return sum(values) / len(values) if values else None


def decide_promotion(new: Mapping[str, float | None] | None,
                     current: Mapping[str, float | None] | None, *,
                     current_id: int | None, force: bool = False,
                     tolerance: float = PROMOTION_TOLERANCE) -> PromotionDecision:
    """The gate: promote unless the new model is worse than the current one on the same images.

    ``new``/``current``: per-head accuracy of each model on the same evaluation images
    (``current`` None: the current model could not be measured). A first model (no current)
    is always promoted; so is one that cannot be compared (not evaluated, no shared head),
    with the reason saying so. ``force`` is the user's confirmation: promote whatever the
    comparison says, and record that it was forced.
    """
    if current_id is None:
        return PromotionDecision(True, "first model: there is no current model to compare with",
                                 tolerance=tolerance, forced=force)
    heads = {a: (float(current[a]), float(new[a])) for a in (new or {})
             if (new or {}).get(a) is not None and (current or {}).get(a) is not None}
    if not heads:
        why = ("the new model was not evaluated" if not new or mean_accuracy(new) is None
               else f"model #{current_id} could not be measured on the same images")
        return PromotionDecision(True, f"made current without a comparison: {why}",
                                 current_id=current_id, tolerance=tolerance, forced=force)
    cur = sum(c for c, _ in heads.values()) / len(heads)
    new_mean = sum(n for _, n in heads.values()) / len(heads)
    worse = new_mean < cur - tolerance - 1e-12
    detail = ", ".join(f"{a} {c:.1%} → {n:.1%}" for a, (c, n) in heads.items())
    facts = (f"mean accuracy over heads {new_mean:.1%} vs {cur:.1%} for current model "
             f"#{current_id} on the same evaluation images ({detail})")
    if not worse:
        reason = f"not worse than the current model: {facts}"
    elif force:
        reason = f"made current on the user's confirmation although worse: {facts}"
    else:
        reason = (f"NOT made current: worse than the current model by more than "
                  f"{tolerance * 100:.0f} points: {facts}")
    return PromotionDecision(promote=not worse or force, reason=reason, current_id=current_id,
                             new_accuracy=new_mean, current_accuracy=cur, per_head=heads,
                             tolerance=tolerance, forced=force and worse, compared=True)
