"""Model checkpoints: atomic writes and loading one file (which model is current is core's business).

Why atomic: the app trains in a background job that can be killed at any moment (user cancel,
power cut, OOM). A checkpoint is written to a temporary file in the same folder, flushed and
fsynced, then renamed over the target with ``os.replace`` (atomic on POSIX and Windows), and the
folder is fsynced so the rename itself survives a crash. A reader therefore sees the old file or
the new one, never half of one.

A checkpoint is ``{"model_state": state_dict, "meta": {...}}`` with plain-typed meta (schema
class lists, image size, training params, the backbone's name and where its initial weights came
from), so it loads with ``torch.load(weights_only=True)`` and rebuilds the right architecture and
heads without the workspace's schema file. Checkpoints written before backbones were selectable
have no ``backbone`` entry: they are ResNet18.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from data.errors import UserError
from data.schema import LabelSchema
from models.backbones import (BACKBONES, DEFAULT_BACKBONE, FEATURE_DIMS, Backbone, WeightsOrigin,
                              build_architecture)
from models.network import MultiHeadNet

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
               origin: str | WeightsOrigin = "", extra: Mapping[str, Any] | None = None,
               backbone: str = DEFAULT_BACKBONE,
               weights_origin: WeightsOrigin | None = None) -> dict[str, Any]:
    """The plain-typed metadata stored beside the weights.

    ``origin`` is the human sentence; ``weights_origin`` the structured record (backbone, kind,
    detail) that the models table and the ONNX metadata carry as well. A :class:`WeightsOrigin`
    passed as ``origin`` (what ``build_model`` returns) fills both.
    """
    if isinstance(origin, WeightsOrigin):
        weights_origin = weights_origin or origin
        backbone = origin.backbone
        origin = origin.sentence()
    meta: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "attributes": list(schema.attributes),
        "classes": {a: list(schema.classes[a]) for a in schema.attributes},
        "image_size": int(image_size),
        "params": dict(params or {}),
        "origin": origin,
        "backbone": backbone,
        "weights_origin": weights_origin.to_dict() if weights_origin is not None else None,
    }
    meta.update(extra or {})
    return meta


def meta_backbone(meta: Mapping[str, Any]) -> str:
    """The backbone a checkpoint was built on (ResNet18 for checkpoints older than the field)."""
    return str(meta.get("backbone") or DEFAULT_BACKBONE)


def save_checkpoint(path: str | Path, model: MultiHeadNet, meta: Mapping[str, Any]) -> Path:
    """Atomically write ``model``'s weights (standard memory format) and ``meta``.

    The backbone name is taken from the model itself (the architecture the weights fit), and its
    weights origin too when ``meta`` has none, so a checkpoint can always be rebuilt.
    """
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = dict(meta)
    meta["backbone"] = getattr(model, "backbone_name", DEFAULT_BACKBONE)
    meta["mirror_perms"] = getattr(model, "mirror_perms", None)
    origin = getattr(model, "weights_origin", None)
    if meta.get("weights_origin") is None and origin is not None:
        meta["weights_origin"] = origin.to_dict()
    return atomic_torch_save({"model_state": state, "meta": meta}, path)


def schema_from_meta(meta: Mapping[str, Any]) -> LabelSchema:
    """The heads a checkpoint was trained with (class order = output index)."""
    classes = {a: tuple(meta["classes"][a]) for a in meta["attributes"]}
    return LabelSchema(classes=classes)


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu"
                    ) -> tuple[MultiHeadNet, dict[str, Any]]:
    """Rebuild the network from a checkpoint file; returns ``(model in eval mode, meta)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    blob = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(blob, dict) or "model_state" not in blob or "meta" not in blob:
        raise UserError(f"{path} is not a Car Grouping checkpoint (no model_state/meta)")
    meta = dict(blob["meta"])
    name = meta_backbone(meta)
    if name not in BACKBONES:
        raise UserError(f"{path} was trained on backbone {name!r}, which this version does not "
                        f"know (known: {', '.join(BACKBONES)})")
    origin = WeightsOrigin.from_dict(meta.get("weights_origin")) or WeightsOrigin(
        name, "checkpoint", str(meta.get("origin") or "unrecorded"))
    model = MultiHeadNet(schema_from_meta(meta), backbone=Backbone(
        name, build_architecture(name), FEATURE_DIMS[name], origin),
        mirror_perms=meta.get("mirror_perms"))   # absent in older checkpoints: plain view
    model.load_state_dict(blob["model_state"])
    model.eval()
    return model, meta
