"""Figures the dashboard shows, computed from the store: class counts, learning curve, balance.

The pages draw these; keeping the arithmetic here keeps ``app/`` free of domain logic and lets
the numbers be tested without a browser.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from core.acquisition import score_name
from core.queue_view import queue_items
from core.refit_status import overlay_predictions
from data.balance import plan_orientation_balance
from data.evalset import fingerprint
from data.schema import LabelSchema
from data.store import SPLITS, ProjectStore
from data.workspace import Workspace

RARE_FRACTION = 0.02  # a class with under 2 % of an attribute's labels (but > 0) is "rare"


def class_counts(store: ProjectStore, schema: LabelSchema) -> dict[str, dict[str, dict[str, int]]]:
    """{attribute: {split: {class: n}}} over current labels; every class listed, zeros included."""
    labels = store.current_labels()
    split_of = {im.id: im.split for im in store.images(ids=labels)}
    out = {a: {s: {c: 0 for c in schema.classes[a]} for s in SPLITS} for a in schema.attributes}
    for image_id, values in labels.items():
        split = split_of.get(image_id)
        for attr, value in values.items():
            if attr in out and split in out[attr] and value in out[attr][split]:
                out[attr][split][value] += 1
    return out


def rare_classes(counts: Mapping[str, int], *, fraction: float = RARE_FRACTION) -> tuple[list[str], list[str]]:
    """(empty classes, rare classes) of one attribute's {class: n}."""
    total = sum(counts.values())
    empty = [c for c, n in counts.items() if n == 0]
    rare = [c for c, n in counts.items() if 0 < n < max(1.0, fraction * total)] if total else []
    return empty, rare


def flip_balance(store: ProjectStore, schema: LabelSchema, split: str = "train") -> dict[str, Any]:
    """Orientation counts before/after flip balancing for one split (what training would use)."""
    labels = store.current_labels(split=split)
    plan = plan_orientation_balance(labels, schema)
    return {"before": dict(plan.before), "after": dict(plan.after), "added": dict(plan.added),
            "n_flipped": plan.n_flipped}


def head_accuracies(metrics: Any) -> dict[str, float]:
    """Per-head test accuracy from an evaluation/metrics dict, whatever its nesting.

    Accepts ``{"heads": {attr: {"accuracy": x}}}``, ``{"test": {attr: {...}}}``,
    ``{attr: {"accuracy": x}}`` or ``{"accuracy": {attr: x}}``.
    """
    if not isinstance(metrics, Mapping):
        return {}
    for key in ("test", "evaluation", "heads", "per_head", "attributes"):
        inner = metrics.get(key)
        if isinstance(inner, Mapping):
            found = head_accuracies(inner)
            if found:
                return found
    acc = metrics.get("accuracy")
    if isinstance(acc, Mapping):
        return {str(a): float(v) for a, v in acc.items() if isinstance(v, (int, float))}
    out = {}
    for attr, value in metrics.items():
        if isinstance(value, Mapping) and isinstance(value.get("accuracy"), (int, float)):
            out[str(attr)] = float(value["accuracy"])
    return out


def n_train_labels(model: Mapping[str, Any]) -> int | None:
    """How many labelled images a model was trained on, from its params/metrics."""
    train = model.get("metrics", {}).get("train")
    if isinstance(train, Mapping) and isinstance(train.get("n"), (int, float)):
        return int(train["n"])
    for source in (model.get("metrics", {}), model.get("params", {})):
        for key in ("n_labelled", "n_train", "train_size", "labels", "n_labels", "num_train"):
            value = source.get(key) if isinstance(source, Mapping) else None
            if isinstance(value, (int, float)):
                return int(value)
    return None


def current_eval_fingerprint(store: ProjectStore) -> str | None:
    """Fingerprint of the evaluation set's labelled members (None: the project has no set)."""
    members = store.eval_set_ids()
    if not members:
        return None
    labelled = store.labelled_ids()
    return fingerprint([i for i in members if i in labelled])


def learning_curve(store: ProjectStore, *, same_set_only: bool = False) -> list[dict[str, Any]]:
    """One row per (model, head): round, number of training labels, test accuracy.

    Models whose metrics carry no test accuracy (not evaluated) are left out; the x axis falls
    back to the model's order when the label count is not recorded. ``evaluated_on`` is the
    fingerprint of the images a model was evaluated on, and ``same_set`` says whether that is
    the project's evaluation set as it stands (always true for a project without one). With
    ``same_set_only`` the other rows are left out, so every point is measured on one set.
    """
    rounds = {r["id"]: r["number"] for r in store.rounds()}
    current_fp = current_eval_fingerprint(store)
    rows = []
    for n, model in enumerate(store.models(), start=1):
        if model["status"] == "failed":
            continue
        acc = head_accuracies(model["metrics"])
        labels = n_train_labels(model)
        test = model["metrics"].get("test")
        evaluated_on = ((test.get("eval_set") or {}).get("fingerprint")
                        if isinstance(test, Mapping) else None)
        same = current_fp is None or evaluated_on == current_fp
        if same_set_only and not same:
            continue
        for attr, value in acc.items():
            rows.append({"model": model["id"], "round": rounds.get(model["round_id"]),
                         "labels": labels if labels is not None else n, "head": attr,
                         "accuracy": value, "current": bool(model["is_current"]),
                         "evaluated_on": evaluated_on, "same_set": same})
    return rows


def evaluation_report(ws: Workspace, model: Mapping[str, Any], split: str = "test") -> dict[str, Any] | None:
    """The full evaluation report (confusion matrices, per-class P/R/F1) saved beside a model."""
    path = Path(model["path"])
    path = path if path.is_absolute() else ws.root / path
    report = path.parent / f"metrics_{split}.json"
    if not report.is_file():
        return None
    return json.loads(report.read_text(encoding="utf-8"))


def queue_view(ws: Workspace, round_number: int | None = None) -> list[dict[str, Any]]:
    """A round's ranked images with per-head predictions and per-head uncertainty scores.

    Scores are the ones the ranking model stored (``entropy:color``, ``margin:type``, ...); a
    random or seed round has none.
    """
    items = queue_items(ws, round_number)
    with ws.store() as store:
        rnd = store.round(round_number) if round_number is not None else store.latest_round()
        per_head: dict[str, dict[int, float]] = {}
        if rnd is not None and rnd.get("model_id"):
            names = [score_name(m, a) for m in ("entropy", "margin", "least_confidence", "bald")
                     for a in ws.schema.attributes]
            per_head = {n: v for n in names if (v := store.scores(int(rnd["model_id"]), n))}
    rows = [{**it.to_dict(),
             "scores": {n: v[it.image_id] for n, v in per_head.items() if it.image_id in v}}
            for it in items]
    if rnd is not None and rnd["record"].get("reranked"):
        rows = overlay_predictions(ws, rows)  # the head refit's view of a re-ranked batch
    return rows
