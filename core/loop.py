"""One active-learning round as a single call: import labels -> train -> evaluate -> score -> queue.

Why one function: the app's "next round" button, the CLI's ``round`` command and the benchmark
all run the same sequence, and a round's record (label counts, metrics, strategy, timings) must
be written the same way each time so the dashboard can chart rounds side by side.

The record is attached to the round the call creates (the new queue), so round N's record says
"with these labels, this model scored this well, and these are the images it asked for next".
A failed step raises and writes no round. Training promotes its model only as its own last
step (see :mod:`core.training`), so a failure or cancel up to then leaves the previous model
current; a cancel while scoring leaves the new model current but records no round. When the
promotion gate refuses the new model (worse on the evaluation set), the round is scored and
ranked by the model that stays current, and the record says so (``promotion``, ``ranked_by``).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from core.annotator import simulate_labels
from core.queue import QueueResult, build_queue
from core.scoring import ScoringCancelled, score_pool
from core.training import train_and_promote
from data.datumaro_io import import_datumaro
from data.errors import UserError
from data.ingest import load_labels_csv
from data.progress import CancelFn, Progress, ProgressFn, scaled
from data.workspace import Workspace
from models.train import TrainConfig

log = logging.getLogger(__name__)

# Share of the progress bar per stage (training dominates).
_STAGES = {"labels": (0.0, 0.03), "train": (0.03, 0.80), "evaluate": (0.80, 0.85),
           "score": (0.85, 0.97), "queue": (0.97, 1.0)}


@dataclass
class RoundReport:
    """What :func:`run_round` did; ``record`` is what was stored with the round."""

    status: str                       # "succeeded" or "cancelled" (then no round is recorded)
    round_number: int | None = None
    model_id: int | None = None
    queue: QueueResult | None = None
    record: dict[str, Any] = field(default_factory=dict)


def _stage(progress: ProgressFn | None, name: str) -> ProgressFn:
    """``progress`` scaled onto the stage's share of the bar (a no-op without one)."""
    return scaled(progress, *_STAGES[name], name) or (lambda p: None)


def import_labels_csv(ws: Workspace, path: str | Path) -> dict[str, int]:
    """Labels from a ``file,color,type,orientation`` CSV, matched to pool images by file name.

    Rows naming no pool image, or a file name that several pool images share, are counted as
    skipped rather than guessed.
    """
    truth, _ = load_labels_csv(path, ws.schema)
    added = skipped = unchanged = 0
    ref = f"file:{Path(path).name}"
    with ws.store() as store:
        with store.transaction():
            for rel, values in truth.items():
                matches = store.image_by_name(Path(rel).name)
                if len(matches) != 1:
                    skipped += 1
                    continue
                if store.add_label(matches[0].id, values, source="import", source_ref=ref) is None:
                    unchanged += 1
                else:
                    added += 1
    return {"added": added, "unchanged": unchanged, "skipped": skipped}


def import_labels(ws: Workspace, path: str | Path) -> dict[str, Any]:
    """Import a labels file: Datumaro export (.zip/.json) or a labels CSV."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"labels file {path} does not exist")
    if path.suffix.lower() == ".csv":
        return {"format": "csv", **import_labels_csv(ws, path)}
    report = import_datumaro(ws, path)
    out: dict[str, Any] = {"format": "datumaro"}
    for key in ("added", "unchanged", "skipped", "rejected", "unlabelled"):
        value = getattr(report, key, None)
        if value is not None:
            out[key] = value if isinstance(value, int) else len(value)
    return out


def pending_ids(ws: Workspace) -> list[int]:
    """Queued images (any round) that still have no label: what an annotator should do next."""
    with ws.store() as store:
        labelled = store.labelled_ids()
        return sorted(i for i in store.queued_ids() if i not in labelled)


def simulate_pending(ws: Workspace, *, error_rate: float = 0.0, seed: int = 0) -> int:
    """Label every pending queued image from the hidden ground truth (demo and benchmarks)."""
    ids = pending_ids(ws)
    if not ids:
        return 0
    with ws.store() as store:
        result = simulate_labels(store, ws.schema, ids, error_rate=error_rate, seed=seed)
    return len(ids) if not isinstance(result, int) else int(result)


def label_summary(ws: Workspace) -> dict[str, Any]:
    """Label counts by split and by attribute (for the round record and the dashboard)."""
    with ws.store() as store:
        split_of = {r.id: r.split for r in store.images()}
        labels = store.current_labels()
    by_split: dict[str, int] = {}
    by_attr: dict[str, dict[str, int]] = {}
    for image_id, values in labels.items():
        split = split_of.get(image_id, "?")
        by_split[split] = by_split.get(split, 0) + 1
        for a in values:
            by_attr.setdefault(a, {})
            by_attr[a][split] = by_attr[a].get(split, 0) + 1
    return {"total": len(labels), "by_split": by_split, "by_attribute": by_attr,
            "train_labels": by_split.get("train", 0) + by_split.get("val", 0)}


def run_round(ws: Workspace, *, labels: str | Path | None = None, simulate: bool = False,
              error_rate: float = 0.0, strategy: str = "entropy", top_k: int = 200,
              weights: Mapping[str, float] | None = None, diversity: str | bool | None = None,
              balance: bool = False, sampling: str | None = None, beta: float = 1.0,
              backbone: str | None = None,
              train_config: Any = None, warm_start: bool | None = None,
              eval_split: str = "test", seed: int = 0,
              score_kwargs: Mapping[str, Any] | None = None,
              progress: ProgressFn | None = None,
              should_cancel: CancelFn | None = None,
              force_promote: bool = False) -> RoundReport:
    """Run one round and record it; returns a :class:`RoundReport`.

    - ``labels``: optional labels file to import first (Datumaro zip/json or CSV).
    - ``simulate``: label the pending queued images from hidden ground truth (demo pools).
    - ``train_config``: a :class:`models.train.TrainConfig`; ``warm_start`` None means "warm
      start when a current model exists".
    - the queue options are those of :func:`core.queue.build_queue` (``backbone`` is its
      embedding backbone for typiclust/probcover/auto).
    - a first model is built on ``train_config.backbone`` (and its ``weights`` file); a warm
      start keeps the current model's backbone. The record's ``model`` says which backbone the
      round's model has and where its weights came from.
    """
    timings: dict[str, float] = {}
    t = time.perf_counter()
    imported: dict[str, Any] = {}
    if labels is not None:
        imported = import_labels(ws, labels)
    if simulate:
        imported["simulated"] = simulate_pending(ws, error_rate=error_rate, seed=seed)
    _stage(progress, "labels")(Progress(1.0, "labels imported"))
    counts = label_summary(ws)
    timings["labels_s"] = time.perf_counter() - t

    t = time.perf_counter()
    with ws.store() as store:
        previous = store.current_model()
    config = train_config if train_config is not None else TrainConfig()
    auto_warm = previous is not None if warm_start is None else bool(warm_start)
    config = dataclasses.replace(config, warm_start=auto_warm and previous is not None)
    outcome = train_and_promote(ws, config, eval_split=eval_split,
                                progress=_stage(progress, "train"), should_cancel=should_cancel,
                                force_promote=force_promote)
    if outcome.cancelled:
        return RoundReport(status="cancelled", record={"labels": counts, "imported": imported})
    result = outcome.train
    model_id = int(outcome.model_id)
    # a refused model is recorded but not current: the current one scores and ranks the pool
    ranker = model_id if outcome.promoted or outcome.decision is None \
        else int(outcome.decision.current_id)
    timings["train_s"] = result.seconds
    timings["evaluate_s"] = max(0.0, time.perf_counter() - t - result.seconds)

    if outcome.evaluation is not None:
        metrics: dict[str, Any] = outcome.evaluation.summary()
        accs = [v for v in metrics["accuracy"].values() if v is not None]
        metrics["mean_accuracy"] = sum(accs) / len(accs) if accs else None
    else:   # no labelled test images yet: the round still goes on
        metrics = {"skipped": str(outcome.evaluation_skipped)}
    _stage(progress, "evaluate")(Progress(1.0, "evaluated"))

    t = time.perf_counter()
    try:
        score_pool(ws, ranker, progress=_stage(progress, "score"), should_cancel=should_cancel,
                   **dict(score_kwargs or {}))
    except ScoringCancelled:
        return RoundReport(status="cancelled", model_id=model_id,
                           record={"labels": counts, "imported": imported})
    timings["score_s"] = time.perf_counter() - t

    t = time.perf_counter()
    queue = build_queue(ws, strategy, top_k, weights=weights, diversity=diversity,
                        balance=balance, sampling=sampling, beta=beta, seed=seed,
                        backbone=backbone, model_id=ranker, record=True)
    timings["queue_s"] = time.perf_counter() - t
    _stage(progress, "queue")(Progress(1.0, f"queued {len(queue.items)} images"))
    timings["total_s"] = sum(timings.values())

    with ws.store() as store:
        row = next((m for m in store.models() if int(m["id"]) == model_id), {})
    record = {
        "labels": counts,
        "imported": imported,
        "model_id": model_id,
        "model": {"backbone": row.get("backbone", config.backbone), "origin": result.origin,
                  "weights_origin": row.get("weights_origin")},
        "warm_started_from": outcome.warm_started_from,
        "ranked_by": ranker,
        "promotion": None if outcome.decision is None else outcome.decision.to_dict(),
        "train": {"epochs": result.epochs_run, "best_epoch": result.best_epoch,
                  "val_loss": result.best_val_loss, "val_accuracy": result.val_acc,
                  "train_images": result.train_images, "val_images": result.val_images,
                  "seconds": result.seconds},
        "metrics": {eval_split: metrics},
        "strategy": strategy,
        "queue": {k: v for k, v in queue.params.items() if k != "rarity"},
        "queued": len(queue.items),
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    with ws.store() as store:
        store.update_round_record(int(queue.round_number), record)
    return RoundReport(status="succeeded", round_number=queue.round_number, model_id=model_id,
                       queue=queue, record=record)
