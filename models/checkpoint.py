"""Model checkpoints: atomic writes and loading one file (which model is current is core's business).

Why atomic: the app trains in a background job that can be killed at any moment (user cancel,
power cut, OOM). A checkpoint is written to a temporary file in the same folder, flushed and
fsynced, then renamed over the target with ``os.replace`` (atomic on POSIX and Windows), and the
folder is fsynced so the rename itself survives a crash. A reader therefore sees the old file or
the new one, never half of one.

A checkpoint is ``{"model_state": state_dict, "meta": {...}}`` with plain-typed meta (schema
class lists, image size, training params, where the initial weights came from), so it loads with
``torch.load(weights_only=True)`` and rebuilds its heads without the workspace's schema file.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torchvision.models import resnet18

from data.errors import UserError
from data.schema import LabelSchema
from models.network import MultiHeadResNet

CHECKPOINT_NAME = "model.pt"
FORMAT_VERSION = 1


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` so that readers only ever see a complete file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def model_meta(schema: LabelSchema, image_size: int, *, params: Mapping[str, Any] | None = None,
               origin: str = "", extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The plain-typed metadata stored beside the weights."""
    meta: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "attributes": list(schema.attributes),
        "classes": {a: list(schema.classes[a]) for a in schema.attributes},
        "image_size": int(image_size),
        "params": dict(params or {}),
        "origin": origin,
    }
    meta.update(extra or {})
    return meta


def save_checkpoint(path: str | Path, model: MultiHeadResNet, meta: Mapping[str, Any]) -> Path:
    """Atomically write ``model``'s weights (standard memory format) and ``meta``."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return atomic_torch_save({"model_state": state, "meta": dict(meta)}, path)


def schema_from_meta(meta: Mapping[str, Any]) -> LabelSchema:
    """The heads a checkpoint was trained with (class order = output index)."""
    classes = {a: tuple(meta["classes"][a]) for a in meta["attributes"]}
    return LabelSchema(classes=classes)


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu"
                    ) -> tuple[MultiHeadResNet, dict[str, Any]]:
    """Rebuild the network from a checkpoint file; returns ``(model in eval mode, meta)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    blob = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(blob, dict) or "model_state" not in blob or "meta" not in blob:
        raise UserError(f"{path} is not a Car Grouping checkpoint (no model_state/meta)")
    meta = dict(blob["meta"])
    model = MultiHeadResNet(schema_from_meta(meta), backbone=resnet18(weights=None))
    model.load_state_dict(blob["model_state"])
    model.eval()
    return model, meta
