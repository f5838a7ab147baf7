"""The store's model rows and where a model's files live, without loading a network.

Split out of :mod:`core.registry` (which loads checkpoints, so it imports torch) so the pages'
queries (saved pool scores, the Queue page's ``auto`` reason) stay torch-free: torch loads only
in the job runners, training, scoring and export. :mod:`core.registry` re-exports these names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from data.errors import UserError
from data.workspace import Workspace


def resolve_model_path(ws: Workspace, stored_path: str) -> Path:
    """Model paths are stored relative to the workspace root so a workspace can be moved."""
    p = Path(stored_path)
    return p if p.is_absolute() else ws.root / p


def model_record(ws: Workspace, model_id: int | None = None) -> dict[str, Any]:
    """The store's row for ``model_id`` (default: the current model), or a UserError."""
    with ws.store() as store:
        if model_id is None:
            record = store.current_model()
            if record is None:
                raise UserError("no trained model yet; run `python -m core train` first")
            return record
        for record in store.models():
            if record["id"] == model_id:
                return record
    raise UserError(f"no model with id {model_id}")


def model_folder(ws: Workspace, model_id: int) -> Path:
    """The folder of a model's checkpoint, where its scores and reports are saved."""
    return resolve_model_path(ws, model_record(ws, model_id)["path"]).parent
