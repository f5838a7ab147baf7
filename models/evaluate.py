"""Evaluation on the fixed test split (or any split), and batched prediction from uint8 arrays.

Why per head and only over labelled images: labels are partial, so each attribute is scored on
the images that carry that attribute. Per-class precision/recall/F1 use class **names** so the
JSON is readable without the schema, and the report is saved beside the model weights and as a
summary in the store, so the app can chart test accuracy across rounds.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from data.errors import UserError
from data.workspace import Workspace
from data.cache import ImageCache
from data.dataset import encode_targets, load_split
from data.evalset import fingerprint
from data.preprocess import normalise_batch
from models.checkpoint import load_model, schema_from_meta
from models.network import MultiHeadResNet


@dataclass
class Predictions:
    """Per-head softmax probabilities ``(N, K)``, logits, and 512-d embeddings ``(N, 512)``."""

    probs: dict[str, np.ndarray]
    embeddings: np.ndarray
    logits: dict[str, np.ndarray] = field(default_factory=dict)


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@torch.inference_mode()
def predict_arrays(model: MultiHeadResNet, images_uint8: np.ndarray, image_size: int,
                   batch_size: int = 256, *, device: str | torch.device | None = None,
                   channels_last: bool = True, bf16: bool = False) -> Predictions:
    """Run the model on uint8 ``(N, H, W, 3)`` RGB images (e.g. cache rows).

    Input goes through :func:`data.preprocess.normalise_batch`, the same function every export
    uses. The model is put in eval mode (dropout off) and moved to ``device`` and the memory
    format asked for, and left that way (callers re-enable ``train()`` themselves).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device=device, memory_format=fmt)
    probs: dict[str, list[np.ndarray]] = {a: [] for a in model.attributes}
    logits: dict[str, list[np.ndarray]] = {a: [] for a in model.attributes}
    embs: list[np.ndarray] = []
    for start in range(0, len(images_uint8), batch_size):
        batch = normalise_batch(np.asarray(images_uint8[start:start + batch_size]), image_size)
        x = torch.from_numpy(batch).to(device).contiguous(memory_format=fmt)
        with _autocast(device, bf16):
            out, emb = model.forward_with_embedding(x)
        embs.append(emb.float().cpu().numpy())
        for a, z in out.items():
            z = z.float()
            logits[a].append(z.cpu().numpy())
            probs[a].append(torch.softmax(z, dim=1).cpu().numpy())
    n_feat = model.heads[model.attributes[0]].in_features
    empty = {a: np.zeros((0, len(model.class_names[a])), np.float32) for a in model.attributes}
    return Predictions(
        probs={a: np.concatenate(v) if v else empty[a] for a, v in probs.items()},
        embeddings=np.concatenate(embs) if embs else np.zeros((0, n_feat), np.float32),
        logits={a: np.concatenate(v) if v else empty[a] for a, v in logits.items()},
    )


def head_report(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, confusion matrix and per-class/macro precision, recall, F1 for one head.

    The confusion matrix and per-class table list every class (rows = truth, columns =
    prediction). Macro averages are over the classes that occur in the truth or the predictions
    (sklearn's default), so a class the test set never contains does not count as a zero.
    """
    n = int(len(y_true))
    if n == 0:
        return {"n": 0, "accuracy": None, "macro_precision": None, "macro_recall": None,
                "macro_f1": None, "classes": list(class_names), "confusion_matrix": None,
                "per_class": {}, "macro_over": []}
    all_labels = list(range(len(class_names)))
    cm = confusion_matrix(y_true, y_pred, labels=all_labels)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=all_labels,
                                                 zero_division=0)
    present = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, labels=present,
                                                    average="macro", zero_division=0)
    return {
        "n": n,
        "accuracy": float(np.mean(y_true == y_pred)),
        "macro_precision": float(mp),
        "macro_recall": float(mr),
        "macro_f1": float(mf),
        "classes": list(class_names),
        "confusion_matrix": cm.tolist(),
        "per_class": {
            name: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]),
                   "support": int(s[k])}
            for k, name in enumerate(class_names)
        },
        "macro_over": [class_names[k] for k in present],
    }


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def metrics_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """The small per-split summary kept in the store's model row (for charts across rounds)."""
    heads = report["heads"]
    return {
        "accuracy": {a: h["accuracy"] for a, h in heads.items()},
        "macro_f1": {a: h["macro_f1"] for a, h in heads.items()},
        "n": {a: h["n"] for a, h in heads.items()},
        "n_images": report["n_images"],
        "evaluated_at": report["evaluated_at"],
        "eval_set": report.get("eval_set"),
    }


def evaluate(ws: Workspace, model_id: int | None = None, split: str = "test", *,
             batch_size: int = 256, save: bool = True) -> dict[str, Any]:
    """Evaluate a model (default: current) on the labelled images of ``split``.

    Returns the full report ``{"model_id", "split", "n_images", "evaluated_at", "image_size",
    "heads": {attribute: head_report}}``. With ``save``, it is written to
    ``<model folder>/metrics_<split>.json`` and its summary merged into the model's metrics in
    the store under ``split``.
    """
    model, meta = load_model(ws, model_id)
    schema = schema_from_meta(meta)
    cache = ImageCache(ws.cache_dir, ws.config.cache_size)
    with ws.store() as store:
        # On the test split, a project with an evaluation set is measured on its members only,
        # so every model (every learning-curve point) sees the same images.
        members = store.eval_set_ids() if split == "test" else []
        data = load_split(store, cache, split, only=members or None)
    if len(data) == 0:
        where = "evaluation-set" if members else split
        raise UserError(f"no labelled {where} images to evaluate on")
    started = time.perf_counter()
    preds = predict_arrays(model, data.images, int(meta["image_size"]), batch_size)
    targets = encode_targets(data.labels, schema)
    heads: dict[str, Any] = {}
    for col, attr in enumerate(schema.attributes):
        mask = targets[:, col] >= 0
        y_true = targets[mask, col]
        y_pred = preds.probs[attr][mask].argmax(axis=1)
        heads[attr] = head_report(y_true, y_pred, list(schema.classes[attr]))
    report = {
        "model_id": meta["model_id"],
        "split": split,
        "n_images": len(data),
        "image_size": int(meta["image_size"]),
        "evaluated_at": time.time(),
        "seconds": round(time.perf_counter() - started, 3),
        "heads": heads,
        "eval_set": {"members": len(members), "images": len(data),
                     "fingerprint": fingerprint(data.image_ids)} if members else None,
    }
    if save:
        _write_json(Path(meta["model_dir"]) / f"metrics_{split}.json", report)
        with ws.store() as store:
            record = next(m for m in store.models() if m["id"] == meta["model_id"])
            metrics = dict(record["metrics"])
            metrics[split] = metrics_summary(report)
            store.set_model_metrics(meta["model_id"], metrics)
    return report


def format_report(report: Mapping[str, Any]) -> str:
    """A few readable lines: per head accuracy, macro F1, support."""
    lines = [f"model {report['model_id']} on {report['split']} ({report['n_images']} images)"]
    for attr, h in report["heads"].items():
        if not h["n"]:
            lines.append(f"  {attr:12s} no labelled images")
            continue
        lines.append(f"  {attr:12s} accuracy {h['accuracy']:.3f}  macro-F1 {h['macro_f1']:.3f}"
                     f"  (n={h['n']})")
    return "\n".join(lines)
