"""Evaluation of a model on one split's labelled images, and batched prediction from uint8 arrays.

Why per head and only over labelled images: labels are partial, so each attribute is scored on
the images that carry that attribute. Per-class precision/recall/F1 use class **names** so the
JSON is readable without the schema. Each head also carries the majority-class baseline (always
answer the most frequent class), so a reader sees whether the model beats a constant guess.
Plain functions over arrays: :mod:`core.training` loads the split, saves the report beside the
weights and records its summary in the store.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support)

from data.dataset import SplitData, encode_targets
from data.errors import UserError
from data.evalset import fingerprint
from data.preprocess import normalise_batch
from data.schema import LabelSchema
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
                "per_class": {}, "macro_over": [], "baseline": None}
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
        "baseline": majority_baseline(y_true, class_names),
    }


def majority_baseline(y_true: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Accuracy and macro-F1 of always answering the split's most frequent class."""
    majority = int(np.bincount(y_true, minlength=len(class_names)).argmax())
    guess = np.full_like(y_true, majority)
    return {"class": class_names[majority],
            "accuracy": float(accuracy_score(y_true, guess)),
            "macro_f1": float(f1_score(y_true, guess, labels=sorted(set(y_true.tolist())),
                                       average="macro", zero_division=0))}


@dataclass
class EvaluationReport:
    """A model's per-head report on one split; ``heads[attr]`` is :func:`head_report`'s dict."""

    model_id: int | None
    split: str
    n_images: int
    image_size: int
    evaluated_at: float
    seconds: float
    heads: dict[str, dict[str, Any]]
    eval_set: dict[str, Any] | None = None   # {members, images, fingerprint} on the evaluation set

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> dict[str, Any]:
        """The small per-split summary kept in the store's model row (for charts across rounds)."""
        return metrics_summary(self.to_dict())


def metrics_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """The store's per-split summary of a report dict (see :meth:`EvaluationReport.summary`)."""
    heads = report["heads"]
    return {
        "accuracy": {a: h["accuracy"] for a, h in heads.items()},
        "macro_f1": {a: h["macro_f1"] for a, h in heads.items()},
        "n": {a: h["n"] for a, h in heads.items()},
        "n_images": report["n_images"],
        "evaluated_at": report["evaluated_at"],
        "eval_set": report.get("eval_set"),
    }


def evaluate_split(model: MultiHeadResNet, schema: LabelSchema, data: SplitData, image_size: int,
                   *, split: str = "test", model_id: int | None = None,
                   batch_size: int = 256, eval_set_members: int = 0) -> EvaluationReport:
    """Per-head metrics of ``model`` on the labelled images in ``data``.

    ``eval_set_members`` > 0 says ``data`` is the project's evaluation set (that many members);
    the report then records it with a fingerprint of the images measured, so learning-curve
    points can be compared on one set. Raises :class:`data.errors.UserError` when ``data`` is
    empty: nothing was measured.
    """
    if len(data) == 0:
        where = "evaluation-set" if eval_set_members else split
        raise UserError(f"no labelled {where} images to evaluate on")
    started = time.perf_counter()
    preds = predict_arrays(model, data.images, int(image_size), batch_size)
    targets = encode_targets(data.labels, schema)
    heads: dict[str, dict[str, Any]] = {}
    for col, attr in enumerate(schema.attributes):
        mask = targets[:, col] >= 0
        heads[attr] = head_report(targets[mask, col], preds.probs[attr][mask].argmax(axis=1),
                                  list(schema.classes[attr]))
    return EvaluationReport(model_id=model_id, split=split, n_images=len(data),
                            image_size=int(image_size), evaluated_at=time.time(),
                            seconds=round(time.perf_counter() - started, 3), heads=heads,
                            eval_set={"members": eval_set_members, "images": len(data),
                                      "fingerprint": fingerprint(data.image_ids)}
                            if eval_set_members else None)


def format_report(report: EvaluationReport | Mapping[str, Any]) -> str:
    """Readable lines for a terminal: per head accuracy, macro-F1 and the majority baseline,
    then per class precision, recall, F1 and support by class name."""
    if isinstance(report, EvaluationReport):
        report = report.to_dict()
    lines = [f"model {report['model_id']} on {report['split']} ({report['n_images']} images)"]
    for attr, h in report["heads"].items():
        if not h["n"]:
            lines.append(f"  {attr}: no labelled images")
            continue
        lines.append(f"  {attr}: accuracy {h['accuracy']:.3f}  macro-F1 {h['macro_f1']:.3f}"
                     f"  (n={h['n']})")
        base = h.get("baseline")
        if base:
            lines.append(f"    majority-class baseline (always {base['class']!r}): accuracy "
                         f"{base['accuracy']:.3f}  macro-F1 {base['macro_f1']:.3f}")
        width = max(len(c) for c in h["per_class"]) if h["per_class"] else 5
        lines.append(f"    {'class':<{width}}  precision  recall     F1  support")
        for name, row in h["per_class"].items():
            lines.append(f"    {name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  "
                         f"{row['f1']:5.3f}  {row['support']:7d}")
    return "\n".join(lines)


