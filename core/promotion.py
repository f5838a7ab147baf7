"""Promote a trained model to current, or roll back to the one that was current before it.

A maintainer-only service (see :mod:`core.access`): which model is current decides what ranks the
queue, what pre-fills labels and what gets exported, so changing it is checked and audited here.
"""
from __future__ import annotations

from core.access import Principal, audit, authorize
from data.accounts import audit_entries
from data.errors import UserError
from data.workspace import Workspace


def promote(ws: Workspace, model_id: int, *, principal: Principal | None = None) -> int:
    """Make ``model_id`` the current model; returns the id that was current before (or 0)."""
    with ws.store() as store:
        who = authorize(store, principal, "promote")
        models = {m["id"]: m for m in store.models()}
        if model_id not in models:
            raise UserError(f"no model #{model_id}")
        if models[model_id]["status"] != "ready":
            raise UserError(f"model #{model_id} is {models[model_id]['status']}, not ready")
        before = store.current_model()
        store.set_current_model(model_id)
        audit(store, who, "promote", {"model_id": model_id,
                                      "previous": before["id"] if before else None})
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
