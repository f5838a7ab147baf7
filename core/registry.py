"""The store's model rows: which model is current, where a model's file is, loading it.

Why here: :mod:`models` works on files and arrays only; which models exist and which one is
current live in the project store, which only :mod:`core` reads for models and writes.
A trained model is recorded (and, if the promotion gate agrees, made current) by
:func:`core.training.promote`; the user makes any ready model current with
:func:`core.promotion.promote` (audited).
The torch-free part (rows and paths) lives in :mod:`core.model_records`, re-exported here.
"""
from __future__ import annotations

from typing import Any

import torch

from core.model_records import model_record, resolve_model_path  # noqa: F401 - re-exported
from data.workspace import Workspace
from models.checkpoint import load_checkpoint
from models.network import MultiHeadResNet


def load_model(ws: Workspace, model_id: int | None = None, *,
               map_location: str | torch.device = "cpu") -> tuple[MultiHeadResNet, dict[str, Any]]:
    """Load the workspace's current model (or ``model_id``); returns ``(model, meta)``.

    ``meta`` gains ``model_id``, ``path`` (absolute) and ``model_dir`` so callers can save
    results (metrics, exports) beside the weights.
    """
    record = model_record(ws, model_id)
    path = resolve_model_path(ws, record["path"])
    model, meta = load_checkpoint(path, map_location=map_location)
    meta.update(model_id=int(record["id"]), path=str(path), model_dir=str(path.parent))
    return model, meta
