"""Training as a project service: load the splits, train, evaluate, then (last) promote.

Why here and in this order: :mod:`models.train` and :mod:`models.evaluate` are plain functions
over arrays and folders. This module is the only code that records a trained model in the store
and the one place that decides which model is current. A run writes into its own new folder;
the new model is recorded *and* made current in one transaction as the very last step, after
the test evaluation and the final cancel check. So a cancelled run, or one whose evaluation
failed, deletes its folder and records nothing: the previous model really stays current.

The promotion gate (:func:`core.promotion.decide_promotion`) decides that last step: the new
model becomes current only if its mean accuracy over heads is not worse than the current
model's on the same evaluation images (the current model is re-measured on them when its stored
figures came from other images), or the caller passes ``force_promote`` (the user confirmed).
A refused model is still recorded, ready but not current, with the decision in its metrics
(``metrics["promotion"]``), so the Train page can say why and offer "Make it current anyway".

Only "no labelled test images" is not a failure: the model is promoted with its evaluation
marked as skipped (and the caller says so), because a first model must be possible before any
test image is labelled.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.cache import ImageCache
from data.dataset import SplitData, encode_targets, load_split, load_unlabelled_pool
from data.errors import UserError
from data.progress import CancelFn, ProgressFn
from data.workspace import Workspace
from core.promotion import PromotionDecision, decide_promotion
from core.registry import load_model
from models.backbones import WeightsOrigin
from models.checkpoint import load_checkpoint, schema_from_meta
from models.evaluate import EvaluationReport, evaluate_split
from models.network import MultiHeadResNet
from models.semi import FixMatchTerm
from models.train import TrainConfig, TrainResult, train, training_metrics

log = logging.getLogger(__name__)


@dataclass
class TrainingOutcome:
    """What :func:`train_and_promote` did.

    ``status``: ``"promoted"`` (recorded and current), ``"refused"`` (recorded and ready, but
    the promotion gate kept the previous model current: ``decision.reason`` says why) or
    ``"cancelled"`` (nothing recorded). ``evaluation_skipped`` says why there is no test report.
    """

    status: str
    train: TrainResult
    model_id: int | None = None
    evaluation: EvaluationReport | None = None
    evaluation_skipped: str | None = None
    warm_started_from: int | None = None
    decision: PromotionDecision | None = None

    @property
    def promoted(self) -> bool:
        return self.status == "promoted"

    @property
    def refused(self) -> bool:
        return self.status == "refused"

    @property
    def cancelled(self) -> bool:
        return self.status == "cancelled"

    def to_dict(self) -> dict[str, Any]:
        """The train result's fields plus ``model_id``, ``warm_started_from`` and ``test``."""
        return {**self.train.to_dict(), "status": self.status, "model_id": self.model_id,
                "warm_started_from": self.warm_started_from,
                "test": None if self.evaluation is None else self.evaluation.to_dict(),
                "test_skipped": self.evaluation_skipped,
                "promotion": None if self.decision is None else self.decision.to_dict()}


def _cache(ws: Workspace) -> ImageCache:
    return ImageCache(ws.cache_dir, ws.config.cache_size)


def load_splits(ws: Workspace, *splits: str) -> list[SplitData]:
    """The labelled images of each split, pixels from the cache."""
    cache = _cache(ws)
    with ws.store() as store:
        return [load_split(store, cache, s) for s in splits]


def load_eval_data(ws: Workspace, split: str) -> tuple[SplitData, int]:
    """The images a model is measured on, and the evaluation set's size (0: none).

    On the test split, a project with an evaluation set is measured on its labelled members
    only, so every model (every learning-curve point) sees the same images.
    """
    with ws.store() as store:
        members = store.eval_set_ids() if split == "test" else []
        return load_split(store, _cache(ws), split, only=members or None), len(members)


def new_run_dir(ws: Workspace) -> Path:
    """A fresh folder under ``models/`` for one run."""
    path = ws.models_dir / f"m{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def _warm_start(ws: Workspace, config: TrainConfig
                ) -> tuple[MultiHeadResNet | None, str | None, int | None]:
    """(initial model, origin, parent id) for a warm start; Nones when training from scratch."""
    if not config.warm_start:
        return None, None, None
    with ws.store() as store:
        current = store.current_model()
    if current is None:
        log.warning("warm start asked but there is no current model; training from scratch")
        return None, None, None
    model, meta = load_model(ws, int(current["id"]))
    schema = ws.schema
    if meta["classes"] != {a: list(schema.classes[a]) for a in schema.attributes}:
        raise UserError(f"cannot warm-start: model {current['id']} was trained on other class "
                        "lists than the project's schema; train without --warm-start")
    name = model.backbone_name
    if name != config.backbone:
        log.info("warm start keeps model %s's backbone %s", current["id"], name)
    first = model.weights_origin.detail if model.weights_origin else "unrecorded"
    origin = WeightsOrigin(name, "checkpoint", f"warm start from model {current['id']} "
                                               f"(its backbone started from: {first})")
    model.weights_origin = origin
    return model, origin.sentence(), int(current["id"])


def _semi_term(ws: Workspace, config: TrainConfig, train_data: SplitData) -> FixMatchTerm | None:
    """The FixMatch unlabelled term over the train split's unlabelled images, when asked for."""
    if config.semi_supervised != "fixmatch":
        return None
    targets = encode_targets(train_data.labels, ws.schema)
    with ws.store() as store:  # read only: pseudo-labels stay in memory, never stored
        pool = load_unlabelled_pool(store, ws.schema, max_images=config.semi_max_images,
                                    seed=config.seed)
    semi = FixMatchTerm.build(pool, _cache(ws), ws.schema, labelled_targets=targets,
                              image_size=config.image_size, batch_size=config.batch_size,
                              threshold=config.semi_threshold, weight=config.semi_weight,
                              seed=config.seed)
    if semi is None:
        log.warning("semi-supervised: no unlabelled train images; supervised only")
    return semi


def _write_report(report: EvaluationReport, folder: Path) -> None:
    path = folder / f"metrics_{report.split}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    os.replace(tmp, path)


def promote(ws: Workspace, checkpoint: Path, *, round_id: int | None, parent_id: int | None,
            params: dict[str, Any], metrics: dict[str, Any],
            evaluation: EvaluationReport | None, backbone: str = "resnet18",
            weights_origin: dict[str, Any] | None = None, make_current: bool = True) -> int:
    """Record a finished model and (``make_current``) make it current, in one transaction;
    returns its id. The promotion gate's refusal records it with ``make_current=False``.

    ``backbone`` and ``weights_origin`` (``WeightsOrigin.to_dict()``) fill the models table's
    columns of the same names, so the Models page can say what each model was built on.

    The evaluation report is written beside the weights inside the same transaction, so a
    failure to write it leaves nothing recorded.
    """
    rel_path = os.path.relpath(checkpoint, ws.root)
    with ws.store() as store:
        with store.transaction():
            model_id = store.add_model(rel_path, round_id=round_id, parent_id=parent_id,
                                       params=params, metrics=metrics, make_current=make_current,
                                       backbone=backbone, weights_origin=weights_origin)
            if evaluation is not None:
                evaluation.model_id = model_id
                _write_report(evaluation, checkpoint.parent)
    return model_id


def train_and_promote(ws: Workspace, config: TrainConfig | None = None, *,
                      eval_split: str = "test", evaluate_test: bool = True,
                      progress: ProgressFn | None = None,
                      should_cancel: CancelFn | None = None,
                      force_promote: bool = False) -> TrainingOutcome:
    """Train, evaluate on ``eval_split``, check for a cancel, then record and (if the promotion
    gate agrees, or ``force_promote``) make current: the last step.

    Any exception, a cancel at any point, or a failed evaluation deletes the run's folder and
    records nothing, so the previous current model stays current. ``evaluate_test=False``
    skips the evaluation (the model is promoted unevaluated, without a comparison).
    """
    config = config or TrainConfig()
    train_data, val_data = load_splits(ws, "train", "val")
    round_id = config.round_id
    if round_id is None:
        with ws.store() as store:
            latest = store.latest_round()
        round_id = int(latest["id"]) if latest else None
    initial, origin, parent_id = _warm_start(ws, config)
    semi = _semi_term(ws, config, train_data)
    run_dir = new_run_dir(ws)
    try:
        result = train(train_data, val_data, ws.schema, run_dir, config, initial_model=initial,
                       origin=origin, semi=semi, progress=progress, should_cancel=should_cancel)
        result.warm_started_from = parent_id
        if result.cancelled:
            shutil.rmtree(run_dir, ignore_errors=True)
            return TrainingOutcome(status="cancelled", train=result, warm_started_from=parent_id)
        checkpoint = Path(result.path)
        evaluation, skipped = None, None
        test_data, members = load_eval_data(ws, eval_split) if evaluate_test else (None, 0)
        if test_data is None:
            skipped = "evaluation not asked for"
        elif len(test_data) == 0:
            where = "evaluation-set" if members else eval_split
            skipped = f"no labelled {where} images to evaluate on"
        else:
            model, meta = load_checkpoint(checkpoint)
            evaluation = evaluate_split(model, schema_from_meta(meta), test_data,
                                        int(meta["image_size"]), split=eval_split,
                                        eval_set_members=members)
        decision = gate(ws, evaluation, test_data, eval_split, force=force_promote)
        if should_cancel is not None and should_cancel():
            shutil.rmtree(run_dir, ignore_errors=True)
            return TrainingOutcome(status="cancelled", train=result, warm_started_from=parent_id)
        metrics = training_metrics(result)
        metrics["train"]["epochs_run"] = result.epochs_run  # with val.epoch: which epoch was kept
        if evaluation is not None:
            metrics[eval_split] = evaluation.summary()
        metrics["promotion"] = decision.to_dict()
        params = _params(result, config)
        model_id = promote(ws, checkpoint, round_id=round_id, parent_id=parent_id,
                           params=params, metrics=metrics, evaluation=evaluation,
                           backbone=result.backbone or config.backbone,
                           weights_origin=result.weights_origin, make_current=decision.promote)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    log.info("model %d recorded; %s", model_id, decision.reason)
    return TrainingOutcome(status="promoted" if decision.promote else "refused", train=result,
                           model_id=model_id, evaluation=evaluation, evaluation_skipped=skipped,
                           warm_started_from=parent_id, decision=decision)


def current_accuracy_on(ws: Workspace, evaluation: EvaluationReport, data: SplitData,
                        split: str) -> tuple[int | None, dict[str, float | None] | None]:
    """(current model id, its per-head accuracy on the images ``evaluation`` was measured on).

    The stored figures are reused when they carry the same evaluation-set fingerprint;
    otherwise the current model is measured on ``data`` now (a second inference over the
    evaluation images, seconds). ``(None, None)``: no current model; ``(id, None)``: it could
    not be measured (its file is gone or unreadable), so nothing can be compared.
    """
    with ws.store() as store:
        current = store.current_model()
    if current is None:
        return None, None
    current_id = int(current["id"])
    stored = current["metrics"].get(split)
    fp = (evaluation.eval_set or {}).get("fingerprint")
    if (fp is not None and isinstance(stored, dict)
            and (stored.get("eval_set") or {}).get("fingerprint") == fp):
        return current_id, dict(stored.get("accuracy") or {})
    try:
        model, meta = load_model(ws, current_id)
        report = evaluate_split(model, schema_from_meta(meta), data, int(meta["image_size"]),
                                split=split, model_id=current_id)
    except (UserError, OSError, KeyError, RuntimeError, ValueError) as exc:
        log.warning("current model %d could not be measured on the same images: %s",
                    current_id, exc)
        return current_id, None
    return current_id, {a: h["accuracy"] for a, h in report.heads.items()}


def gate(ws: Workspace, evaluation: EvaluationReport | None, data: SplitData | None,
         split: str, *, force: bool = False) -> PromotionDecision:
    """The promotion gate for a new model with ``evaluation`` on ``data`` (see module doc)."""
    if evaluation is None or data is None or len(data) == 0:
        with ws.store() as store:
            current = store.current_model()
        return decide_promotion(None, None, current_id=None if current is None
                                else int(current["id"]), force=force)
    current_id, current_acc = current_accuracy_on(ws, evaluation, data, split)
    new_acc = {a: h["accuracy"] for a, h in evaluation.heads.items()}
    return decide_promotion(new_acc, current_acc, current_id=current_id, force=force)


def _params(result: TrainResult, config: TrainConfig) -> dict[str, Any]:
    return config.to_dict() | {"epochs_planned": config.effective_epochs(),
                               "origin": result.origin, "backbone": result.backbone,
                               "weights_origin": result.weights_origin,
                               "train_images": result.train_images,
                               "train_examples": result.train_examples,
                               "val_images": result.val_images, "bf16": result.bf16}


def evaluate_and_record(ws: Workspace, model_id: int | None = None, split: str = "test", *,
                        batch_size: int = 256, save: bool = True) -> EvaluationReport:
    """Evaluate a recorded model (default: current) on ``split``; with ``save``, write the report
    beside its weights and merge its summary into the model's metrics under ``split``."""
    model, meta = load_model(ws, model_id)
    data, members = load_eval_data(ws, split)
    report = evaluate_split(model, schema_from_meta(meta), data, int(meta["image_size"]),
                            split=split, model_id=int(meta["model_id"]), batch_size=batch_size,
                            eval_set_members=members)
    if save:
        _write_report(report, Path(meta["model_dir"]))
        with ws.store() as store:
            with store.transaction():
                record = next(m for m in store.models() if m["id"] == meta["model_id"])
                metrics = dict(record["metrics"])
                metrics[split] = report.summary()
                store.set_model_metrics(meta["model_id"], metrics)
    return report


__all__ = ["TrainingOutcome", "train_and_promote", "evaluate_and_record", "promote", "gate",
           "current_accuracy_on", "load_splits", "new_run_dir"]
