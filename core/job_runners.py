"""What each background job kind does: thin adapters from a job's params to the capability modules.

Every runner has the signature ``(workspace, params, ctx) -> result dict`` and runs inside the
worker process (see :mod:`core.jobs`), which imports this module only when it runs a job.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from core.dashboard import head_accuracies
from core.evalset import short_sample_text, start_labelling
from core.exports import build_jetson_bundle, export_onnx, quantize_export, resolve_model_id
from core.jobs import JobCancelled, JobConflict, JobContext, job_in_this_process
from core.latency import measure_model
from core.labeling import unfinished_rounds, unfinished_text
from core.loop import simulate_pending
from core.queue import build_queue
from core.refit import refit_and_rerank
from core.refit_status import DEFAULT_EVERY, due
from core.training import evaluate_and_record, train_and_promote
from cvat_bridge import service
from data.demo import create_demo_pool
from data.errors import UserError
from data.ingest import empty_source_text, ingest
from data.progress import Progress
from data.evalset import DEFAULT_PER_CLASS, EvalSetError
from data.sampling import SamplingError
from data.workspace import Workspace
from models.quantize import QuantizationError
from models.train import TrainConfig


ENV_JOB_THREADS = "CARGROUP_JOB_THREADS"


def job_threads(environ: Mapping[str, str] = os.environ, cpus: int | None = None) -> int:
    """Torch threads for a background job: ``$CARGROUP_JOB_THREADS``, else every core but one.

    Why one core fewer: the dashboard (Streamlit) keeps answering clicks while a job trains or
    scores; a job on every core makes each page load wait behind it. On a one-core machine the
    job still gets that core.
    """
    if environ.get(ENV_JOB_THREADS):
        return max(1, int(environ[ENV_JOB_THREADS]))
    cpus = os.cpu_count() if cpus is None else cpus
    return max(1, (cpus or 1) - 1)


def _threads() -> None:
    """Pin torch to :func:`job_threads` so a job leaves a core to the dashboard."""
    torch.set_num_threads(job_threads())


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of a result object (dataclass, dict, list, scalars)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        try:
            return value.item()
        except (ValueError, TypeError):
            pass
    return str(value)


# -- pool ---------------------------------------------------------------------------------------
def run_demo(ws: Workspace, params: dict, ctx: JobContext) -> dict[str, Any]:
    """Generate a demo pool, then (optionally) sample the first batch to label."""
    n = int(params.get("n", 600))
    sample_n = int(params.get("sample", 0))
    result = create_demo_pool(ws, n, seed=int(params.get("seed", 0)),
                              size=int(params.get("size", 96)),
                              progress=ctx.stage(0.0, 0.95 if sample_n else 1.0, "demo pool"))
    out = {"demo": _plain(result), "summary": result.summary()}
    if sample_n:
        out["sample"] = _sample(ws, sample_n, int(params.get("seed", 0)),
                                int(params.get("eval_per_class", DEFAULT_PER_CLASS)))
    out["message"] = f"demo pool of {n} images ready" + (
        _eval_text(out["sample"]) + f"; first batch of {out['sample']['size']} images queued"
        if sample_n else "")
    return out


def _sample(ws: Workspace, n: int, seed: int, eval_per_class: int) -> dict[str, Any]:
    """The evaluation set (when the project has none), then the random first batch."""
    with ws.store() as store:
        try:
            result = start_labelling(store, ws.schema, n, eval_per_class=eval_per_class, seed=seed)
        except (SamplingError, EvalSetError) as exc:
            raise UserError(str(exc)) from exc
    draw = result.eval_draw
    return {"round": result.seed_round, "size": len(result.seed_ids),
            "eval_round": None if draw is None else draw.round_number,
            "eval_size": 0 if draw is None else len(draw.queued)}


def _eval_text(sample: dict[str, Any]) -> str:
    return (f"; evaluation set of {sample['eval_size']} images queued first (round "
            f"{sample['eval_round']})" if sample.get("eval_size") else "")


def run_sample(ws: Workspace, params: dict, ctx: JobContext) -> dict[str, Any]:
    out = _sample(ws, int(params.get("n", 100)), int(params.get("seed", 0)),
                  int(params.get("eval_per_class", DEFAULT_PER_CLASS)))
    n = int(params.get("n", 100))
    out["message"] = f"round {out['round']}: {out['size']} images to label" + _eval_text(out) + (
        f"; {short_sample_text(n, out['size'])}" if out["size"] < n else "")
    return out


def run_ingest(ws: Workspace, params: dict, ctx: JobContext) -> dict[str, Any]:
    """Ingest a folder or archive; the report (added, duplicates, rejects with reasons) is kept."""
    path = str(params.get("path") or "").strip()
    if not path:
        raise UserError("no folder or archive given to ingest")
    report = ingest(ws, Path(path), progress=ctx.stage(0.0, 1.0, "ingesting"),
                    workers=params.get("workers"))
    if not report.files:
        raise UserError(empty_source_text(path))
    return {"report": _plain(report), "message": report.summary()}


def run_label_sim(ws: Workspace, params: dict, ctx: JobContext) -> dict[str, Any]:
    """Label every pending queued image from the demo pool's hidden ground truth."""
    n = simulate_pending(ws, error_rate=float(params.get("error_rate", 0.0)),
                         seed=int(params.get("seed", 0)))
    if n == 0:
        raise UserError("no queued image waiting for a label has hidden ground truth "
                        "(the simulated annotator only works on demo pools)")
    return {"labelled": n, "message": f"simulated annotator labelled {n} queued images"}


# -- model --------------------------------------------------------------------------------------
def run_train(ws: Workspace, params: dict, ctx: JobContext) -> dict[str, Any]:
    """Train (warm start or from scratch), evaluate on the test split, then promote.

    Training reports per step; every report goes to the job's progress, and one log entry per
    report that carries losses feeds the live loss curves. Cancelling stops training at the next
    step; :func:`core.training.train_and_promote` makes the model current only as its last step,
    so a cancelled or failed job leaves the previous model current. Once promoted, a log entry
    ``{"promoted": id}`` says so, and a cancel only skips the optional "then queue" step.
    When the promotion gate refuses the new model (worse on the evaluation set), the job still
    succeeds: the model is recorded, ``result["promotion"]`` says why it is not current, and the
    "then queue" step is skipped (it was asked for with the new model). ``force_promote``
    (the user confirmed) makes it current anyway.
    """
    _threads()
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in params.items() if k in fields})
    last_log = {"t": 0.0}

    def on_progress(p: Progress) -> None:
        info = p.details
        epoch, step, steps = int(info["epoch"]), int(info["step"]), max(1, int(info["steps"]))
        msg = p.message + (f", train loss {float(info['train_loss']):.3f}"
                           if info.get("train_loss") is not None else "")
        # Epoch ends always go to the log (the loss curves); steps at most every 2 s.
        is_epoch = info.get("phase") == "epoch"
        now = time.monotonic()
        if is_epoch or now - last_log["t"] >= 2.0:
            last_log["t"] = now
            entry = {k: _plain(info[k]) for k in ("phase", "epoch", "epochs", "step", "steps",
                                                  "train_loss", "images_per_s")
                     if info.get(k) is not None}
            entry["x"] = max(epoch - 1, 0) + step / steps  # fractional epoch, for the chart
            if is_epoch:
                entry.update(val_loss=_plain(info.get("val_loss")), val_acc=_plain(info.get("val_acc")))
            ctx.progress(0.9 * p.fraction, msg, log=entry)
        else:
            ctx.progress(0.9 * p.fraction, msg)

    outcome = train_and_promote(ws, config, progress=on_progress, should_cancel=ctx.cancelled,
                                force_promote=bool(params.get("force_promote")))
    if outcome.cancelled:
        raise JobCancelled()
    model_id = int(outcome.model_id)
    if outcome.promoted:
        ctx.log(promoted=model_id)
    out: dict[str, Any] = {"train": _plain(outcome.train), "model_id": model_id,
                           "promoted": outcome.promoted,
                           "promotion": outcome.decision.to_dict() if outcome.decision else None,
                           "evaluation": _plain(outcome.evaluation.to_dict())
                           if outcome.evaluation is not None else {}}
    made = "made current" if outcome.promoted else "recorded but NOT made current"
    out["message"] = f"model #{model_id} trained and {made}" + (
        _acc_text(out["evaluation"]) if outcome.evaluation is not None
        else f" (not evaluated: {outcome.evaluation_skipped})")
    if outcome.refused:
        out["message"] += f"; {outcome.decision.reason}"
        if params.get("then_queue"):
            out["message"] += "; no batch queued (the new model is not current)"
        return out
    if params.get("then_queue"):
        if ctx.cancelled():  # the model is already current; only the queue step is skipped
            out["message"] += "; queueing skipped (cancelled)"
            return out
        out.update(_queue_after_training(ws, params, ctx, out["message"]))
    return out


def _queue_after_training(ws: Workspace, params: dict, ctx: JobContext,
                          message: str) -> dict[str, Any]:
    """The "then queue N" step: rank the next batch with the new model, as a queue job of its own.

    The training job holds the *model* lock only; the ranking takes the *queue* lock like any
    queue job (and is refused while another one runs), so two rounds never rank at once.

    While any round still has unlabelled images the step is skipped, with the reason in the
    job's message: a new batch on top would leave the annotators two half-done batches (the
    older one stranded), and ranking now would pick from a pool that the pending labels are
    about to change. Ranking by hand on the Queue page stays possible for whoever wants it.
    """
    with ws.store() as store:
        open_rounds = unfinished_rounds(store)
    if open_rounds:
        reason = (f"{unfinished_text(open_rounds)} (label it first, or rank a batch on the "
                  "Queue page)")
        return {"queue": {"skipped": [b.number for b in open_rounds], "reason": reason},
                "message": f"{message}; no batch queued: {reason}"}
    ctx.progress(0.95, "ranking the next batch with the new model", force=True)
    strategy, top_k = str(params.get("strategy", "entropy")), int(params["then_queue"])
    try:
        with job_in_this_process(ws, "queue", {"strategy": strategy, "top_k": top_k,
                                               "after_training": True}) as job:
            queue = build_queue(ws, strategy, top_k,
                                progress=job.stage(0.0, 0.95, "scoring the pool"))
            job.result = {"round": queue.round_number, "size": len(queue.items),
                          "message": f"round {queue.round_number}: {len(queue.items)} images "
                                     f"ranked by {queue.strategy}"}
    except JobConflict as exc:
        return {"queue": {"refused": str(exc)},
                "message": f"{message}; no batch queued: {exc}"}
    return {"queue": {"round": queue.round_number, "size": len(queue.items)},
            "message": f"{message}; round {queue.round_number}: {len(queue.items)} images queued"}


def _evaluate(ws: Workspace, model_id: int) -> dict[str, Any]:
    return _plain(evaluate_and_record(ws, model_id).to_dict())


def _acc_text(evaluation: Any) -> str:
    acc = head_accuracies(evaluation)
    return ("; test accuracy " + ", ".join(f"{a} {v:.0%}" for a, v in acc.items())) if acc else ""


def run_evaluate(ws: Workspace, params: dict, ctx: JobContext) -> dict[str, Any]:
    _threads()
    model_id = params.get("model_id")
    if model_id is None:
        with ws.store() as store:
            model = store.current_model()
        if model is None:
            raise UserError("no trained model yet; train one first")
        model_id = model["id"]
    evaluation = _evaluate(ws, int(model_id))
    return {"model_id": model_id, "evaluation": evaluation,
            "message": f"model #{model_id} evaluated" + _acc_text(evaluation)}


# -- queue --------------------------------------------------------------------------------------
def run_queue(ws: Workspace, params: dict, ctx: JobContext) -> dict[str, Any]:
    """Score the pool with the current model and record the next ranked batch as a round."""
    _threads()
    weights = {k: float(v) for k, v in (params.get("weights") or {}).items()}
    if weights and all(v == 1.0 for v in weights.values()):
        weights = {}
    result = build_queue(ws, str(params.get("strategy", "auto")), int(params.get("top_k", 100)),
                         weights=weights or None, diversity=params.get("diversity") or None,
                         balance=bool(params.get("balance", False)),
                         sampling=params.get("sampling") or None,
                         progress=ctx.stage(0.0, 0.95, "scoring the pool"))
    chose = result.params.get("auto", {}).get("chose")
    return {"round": result.round_number, "strategy": result.strategy,
            "reason": result.reason, "notes": result.notes,
            "size": len(result.items), "candidates": result.candidates,
            "timings": _plain(result.timings),
            "message": f"round {result.round_number}: {len(result.items)} images ranked by "
                       f"{result.strategy}{f' ({chose})' if chose else ''} out of "
                       f"{result.candidates}" + "".join(f"; {n}" for n in result.notes)}


def run_refit(ws: Workspace, params: dict, ctx: JobContext) -> dict[str, Any]:
    """Refit the heads on cached embeddings and re-rank the open batches (the fast loop).

    Labels saved while it runs are caught up at once (at most ``catch_up`` extra refits), so
    the order the annotators see is never more than one refit behind.
    """
    _threads()
    every = int(params.get("every", DEFAULT_EVERY))
    options: dict[str, Any] = {k: params[k] for k in ("backbone", "class_weight", "strategy")
                               if params.get(k)}
    options["mirror"] = bool(params.get("mirror", True))
    runs = 0
    while True:
        record = refit_and_rerank(ws, progress=ctx.stage(0.0, 0.9, "embedding the pool"),
                                  should_cancel=ctx.cancelled, **options)
        runs += 1
        if runs > int(params.get("catch_up", 2)) or not due(ws, every):
            break
        ctx.check_cancel()
    ranked = ", ".join(f"round {n}: {k}" for n, k in record.reranked.items()) or "no open batch"
    return {"refit": record.to_dict(), "runs": runs,
            "message": f"heads refitted on {record.train_labels} labels"
                       f"{' and their mirror views' if record.mirror else ''} in "
                       f"{record.timings['refit_to_rerank_s']:.1f} s; re-ranked {ranked}"}


# -- export -------------------------------------------------------------------------------------
def run_export(ws: Workspace, params: dict, ctx: JobContext) -> dict[str, Any]:
    """Parity-checked ONNX, then optionally int8 ONNX, the Jetson bundle and a latency table."""
    _threads()
    model_id = resolve_model_id(ws, params.get("model_id"))
    steps = ["onnx"] + [k for k in ("int8", "jetson", "latency") if params.get(k)]
    done: dict[str, Any] = {"model_id": model_id}

    def step(k: int, text: str) -> None:
        ctx.check_cancel()
        ctx.progress(k / len(steps), text, force=True)

    step(0, "exporting ONNX and checking parity with PyTorch")
    done["onnx"] = str(export_onnx(ws, model_id))
    k = 1
    if params.get("int8"):
        step(k, "calibrating and checking int8 ONNX")
        gate = {key: float(params[key]) for key in ("min_agreement", "max_drop") if key in params}
        try:
            path, report = quantize_export(ws, model_id, **gate)
            done["int8"] = str(path)
            done["int8_report"] = _plain(report.to_dict())
        except QuantizationError as exc:  # the gate said no: keep going, say so at the end
            done["int8_refused"] = str(exc)
        k += 1
    if params.get("jetson"):
        step(k, "writing the Jetson bundle")
        done["jetson"] = str(build_jetson_bundle(ws, model_id))
        k += 1
    if params.get("latency"):
        step(k, "timing PyTorch, ONNX fp32 and int8")
        done["latency"] = _plain(measure_model(ws, model_id))
    built = [s for s in steps if s != "int8" or "int8" in done]
    done["message"] = f"model #{model_id}: " + ", ".join(built) + " done" + (
        f"; {done['int8_refused']}" if "int8_refused" in done else "")
    return done


# -- CVAT ---------------------------------------------------------------------------------------
def run_cvat_push(ws: Workspace, params: dict, ctx: JobContext) -> dict[str, Any]:
    """Create a CVAT task from a round (upload, jobs, optional pre-filled predictions)."""
    options = {k: params[k] for k in ("segment_size", "chunk_size", "prefill", "force")
               if params.get(k) is not None}
    ctx.progress(0.01, f"pushing round {params['round_number']} to CVAT", force=True)
    result = service.push(ws, int(params["round_number"]), progress=ctx.stage(0.0, 1.0),
                          **options)
    return {"result": _plain(result), "message": result.summary()}


def run_cvat_pull(ws: Workspace, params: dict, ctx: JobContext) -> dict[str, Any]:
    """Export the pushed tasks as Datumaro through cvat-sdk and import their tags."""
    ctx.progress(0.01, "exporting tasks from CVAT", force=True)
    task_id = params.get("task_id")
    results = service.pull(ws, None if task_id is None else int(task_id),
                           progress=ctx.stage(0.0, 1.0),
                           retract_deleted=bool(params.get("retract_deleted")))
    lines = [r.summary() for r in results]
    return {"tasks": lines, "message": "; ".join(lines) if lines else "no tasks to pull"}
