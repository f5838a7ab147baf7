"""Pool scoring: run a model over every unlabelled image once and keep what ranking needs.

One pass over the preprocessed cache (no JPEG decoding) gives, per image: each head's softmax,
the penultimate embedding (for diversity), and MC-dropout samples of the heads (for BALD).
The backend is ONNX Runtime when the model has a published export (int8 preferred: fastest on
CPU) and PyTorch otherwise; both read :func:`data.preprocess.normalise_batch`, so they see the
same tensors.

Why MC-dropout costs almost nothing here: the network's only dropout sits between the backbone
and the linear heads (models/network.py), so the T stochastic passes reuse one backbone pass
and only redo ``dropout -> Linear`` in numpy, from the head weights in the checkpoint. That also
makes BALD available on the ONNX path, which has no dropout at all.

Results go to three places (the :class:`PoolScores` type and its file format live in
:mod:`core.pool_scores`, so pages can read them without importing torch):
- the store: predicted class + probability per head (``save_predictions``) and per-head and
  combined uncertainty scores (``save_scores``: ``entropy:color``, ..., ``entropy``) for the UI;
- ``<model folder>/embeddings.npy`` with ``embedding_ids.npy`` (row i is image
  ``embedding_ids[i]``), for the diversity step;
- ``<model folder>/pool_scores.npz``: ids, full probabilities, every per-head score and the
  number of MC-dropout passes, so the queue can re-rank with any strategy, head weights or class
  balance without running the model again.

What was computed is stored with the scores: with ``mc_passes=0`` there is no BALD, neither in
the store nor in the file, and asking for it is an error (the queue then rescores), never a
column of zeros that silently ranks by image id.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from core import acquisition as acq
from core.pool_scores import (EMBEDDING_IDS_FILE, EMBEDDINGS_FILE, MEASURES,  # noqa: F401
                              POOL_SCORES_FILE, MissingMeasure, PoolScores, ScoringError,
                              load_pool_scores, pool_scores_for)
from data.workspace import Workspace
from data.cache import ImageCache
from data.preprocess import normalise_batch
from core.exports import find_export
from core.model_records import model_folder
from core.registry import load_model
from data.progress import CancelFn, Progress, ProgressFn
from models.onnx_contract import softmax
from models.onnx_runtime import OnnxClassifier

log = logging.getLogger(__name__)


COVERED_EMBEDDINGS_FILE = "covered_embeddings.npz"
DEFAULT_MC_PASSES = 10


class ScoringCancelled(ScoringError):
    """``should_cancel()`` turned true between batches; nothing was saved."""


@dataclass
class HeadParams:
    """The part of the network MC-dropout re-runs: dropout rate and each head's Linear."""

    dropout: float
    weights: dict[str, np.ndarray]   # attribute -> (K, D)
    biases: dict[str, np.ndarray]    # attribute -> (K,)

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> "HeadParams":
        # Heads are matched to attributes by position (the container keeps insertion order),
        # so this does not depend on how the network keys its head modules.
        linears = list(model.heads.values())
        if len(linears) != len(model.attributes):
            raise ScoringError("the model's heads do not match its attributes")
        return cls(dropout=float(model.dropout.p),
                   weights={a: h.weight.detach().cpu().numpy().astype(np.float32)
                            for a, h in zip(model.attributes, linears)},
                   biases={a: h.bias.detach().cpu().numpy().astype(np.float32)
                           for a, h in zip(model.attributes, linears)})


def mc_dropout_heads(embedding: np.ndarray, heads: HeadParams, passes: int,
                     rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``passes`` stochastic head evaluations on fixed embeddings: {attr: (T, N, K)}.

    Each pass draws one inverted-dropout mask per image (as ``nn.Dropout`` in train mode) and
    applies every head to the same masked features, as the network's forward does.
    """
    emb = np.asarray(embedding, dtype=np.float32)
    p = heads.dropout
    out = {a: np.empty((passes, len(emb), w.shape[0]), np.float32) for a, w in heads.weights.items()}
    for t in range(passes):
        if p > 0:
            keep = rng.random(emb.shape, dtype=np.float32) >= p
            feats = emb * keep / (1.0 - p)
        else:
            feats = emb
        for a, w in heads.weights.items():
            out[a][t] = softmax(feats @ w.T + heads.biases[a])
    return out


class TorchBackend:
    """PyTorch inference on the checkpoint (eval mode: no dropout, BN running stats)."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, image_size: int) -> None:
        # channels-last lets oneDNN pick its fast CPU convolution kernels; values stay fp32
        # (no bf16 here, so rankings match the ONNX path).
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.image_size = int(image_size)

    @torch.inference_mode()
    def predict(self, images: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        x = torch.from_numpy(normalise_batch(images, self.image_size))
        x = x.contiguous(memory_format=torch.channels_last)
        logits, emb = self.model.forward_with_embedding(x)
        probs = {a: torch.softmax(v.float(), dim=1).numpy() for a, v in logits.items()}
        return probs, emb.float().numpy()


class OnnxBackend:
    """ONNX Runtime inference on a published export (see models/export.py)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:

        self.classifier = OnnxClassifier(path, threads=threads)
        self.path = Path(path)
        self.name = "onnx-int8" if ".int8." in self.path.name else "onnx"

    def predict(self, images: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        return self.classifier.predict(images, batch_size=len(images) or 1)


def choose_backend(ws: Workspace, model: torch.nn.Module, model_id: int, image_size: int,
                   backend: str = "auto", *, prefer_int8: bool = True,
                   threads: int | None = None) -> TorchBackend | OnnxBackend:
    """``auto``: the model's ONNX export when one is published, else PyTorch."""
    if backend not in ("auto", "onnx", "torch"):
        raise ScoringError(f"unknown backend {backend!r}; use auto, onnx or torch")
    if backend in ("auto", "onnx"):
        path = find_export(ws, model_id, prefer_int8=prefer_int8)
        if path is not None:
            return OnnxBackend(path, threads=threads)
        if backend == "onnx":
            raise ScoringError(f"model {model_id} has no ONNX export; run `python -m core export`")
    return TorchBackend(model, image_size)


def score_images(backend: TorchBackend | OnnxBackend, cache: ImageCache, cache_rows: Sequence[int],
                 heads: HeadParams, *, batch_size: int = 256, mc_passes: int = DEFAULT_MC_PASSES,
                 seed: int = 0, progress: ProgressFn | None = None,
                 should_cancel: CancelFn | None = None,
                 ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray], dict[str, float]]:
    """Batches from the cache through ``backend``; returns (probs, embeddings, bald, timings).

    ``bald`` is empty when ``mc_passes`` is 0 (nothing computed, nothing pretended).
    """
    rows = np.asarray(cache_rows, dtype=np.int64)
    n = len(rows)
    rng = np.random.default_rng(seed)
    probs: dict[str, list[np.ndarray]] = {a: [] for a in heads.weights}
    bald: dict[str, list[np.ndarray]] = {a: [] for a in heads.weights}
    embs: list[np.ndarray] = []
    t_read = t_model = t_mc = 0.0
    # Reading rows in sorted order keeps the memory map sequential; results are put back after.
    order = np.argsort(rows, kind="stable")
    for start in range(0, n, batch_size):
        if should_cancel is not None and should_cancel():
            raise ScoringCancelled("scoring cancelled")
        sel = order[start:start + batch_size]
        t0 = time.perf_counter()
        images = cache.read(rows[sel])
        t1 = time.perf_counter()
        p, e = backend.predict(images)
        t2 = time.perf_counter()
        if mc_passes > 0:
            samples = mc_dropout_heads(e, heads, mc_passes, rng)
            for a, s in samples.items():
                bald[a].append(acq.bald(s).astype(np.float32))
        t3 = time.perf_counter()
        for a in heads.weights:
            probs[a].append(np.asarray(p[a], dtype=np.float32))
        embs.append(np.asarray(e, dtype=np.float32))
        t_read, t_model, t_mc = t_read + t1 - t0, t_model + t2 - t1, t_mc + t3 - t2
        if progress is not None:
            done = min(start + batch_size, n)
            progress(Progress(done / max(n, 1), f"scored {done}/{n} images"))
    inverse = np.empty_like(order)
    inverse[order] = np.arange(n)
    dim = embs[0].shape[1] if embs else 512

    def _cat(parts: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        return np.concatenate(parts)[inverse] if parts else np.zeros(shape, np.float32)

    out_probs = {a: _cat(v, (0, heads.weights[a].shape[0])) for a, v in probs.items()}
    out_bald = {a: _cat(v, (0,)) for a, v in bald.items()} if mc_passes > 0 else {}
    timings = {"read_s": t_read, "model_s": t_model, "mc_dropout_s": t_mc}
    return out_probs, _cat(embs, (0, dim)), out_bald, timings


def score_pool(ws: Workspace, model_id: int | None = None, *, image_ids: Sequence[int] | None = None,
               backend: str = "auto", prefer_int8: bool = True, batch_size: int = 256,
               mc_passes: int = DEFAULT_MC_PASSES, seed: int = 0, threads: int | None = None,
               save: bool = True, progress: ProgressFn | None = None,
               should_cancel: CancelFn | None = None) -> PoolScores:
    """Score the unlabelled pool (default: every unlabelled image outside the test split).

    With ``save`` the predictions and scores go to the store and the arrays to the model
    folder (see the module docstring). Returns the :class:`PoolScores` either way.
    """
    t_start = time.perf_counter()
    model, meta = load_model(ws, model_id)
    model_id = int(meta["model_id"])
    image_size = int(meta.get("image_size") or ws.config.cache_size)
    heads = HeadParams.from_model(model)
    class_names = {a: list(model.class_names[a]) for a in model.attributes}
    with ws.store() as store:
        if image_ids is None:
            image_ids = store.unlabelled_ids(exclude_splits=("test",))
        records = store.images(list(image_ids))
    records = [r for r in records if r.cache_row is not None]
    if not records:
        raise ScoringError("no cached unlabelled images to score")
    engine = choose_backend(ws, model, model_id, image_size, backend,
                            prefer_int8=prefer_int8, threads=threads)
    cache = ImageCache(ws.cache_dir, ws.config.cache_size)
    t_load = time.perf_counter()
    probs, emb, bald_scores, timings = score_images(
        engine, cache, [r.cache_row for r in records], heads, batch_size=batch_size,
        mc_passes=mc_passes, seed=seed, progress=progress, should_cancel=should_cancel)
    result = PoolScores(model_id, np.array([r.id for r in records], dtype=np.int64), probs, emb,
                        bald_scores, class_names, engine.name, mc_passes=max(int(mc_passes), 0))
    t_scored = time.perf_counter()
    if save:
        folder = Path(meta["model_dir"])
        result.save_arrays(folder)
        stale = [acq.score_name(m, a) for m in MEASURES if m not in result.measures
                 for a in [None, *result.attributes]]
        with ws.store() as store:
            store.save_predictions(model_id, result.predictions())
            store.delete_scores(model_id, stale)
            store.save_scores(model_id, result.score_rows())
    t_end = time.perf_counter()
    result.timings = {"load_s": t_load - t_start, **timings,
                      "score_s": t_scored - t_load, "save_s": t_end - t_scored,
                      "total_s": t_end - t_start, "images": float(len(result))}
    log.info("scored %d images with model %d via %s in %.1f s", len(result), model_id,
             engine.name, t_end - t_start)
    return result


def model_embeddings(ws: Workspace, model_id: int, image_ids: Sequence[int], *,
                     backend: str = "auto", threads: int | None = None,
                     batch_size: int = 256) -> np.ndarray:
    """The model's penultimate embeddings of ``image_ids``, ``(len(image_ids), D)``.

    Why: a true core-set (Sener & Savarese) counts the labelled images as centres already
    chosen, so diversity needs their embeddings too, while pool scoring only embeds unlabelled
    images. Vectors come from the model's saved pool scores where the image was scored, else
    from ``<model folder>/covered_embeddings.npz``, else they are computed now (one backbone
    pass over the missing images, usually the few labelled since the last scoring) and added
    to that file. A model's embedding of an image never changes, so nothing goes stale.
    """
    want = [int(i) for i in image_ids]
    if not want:
        return np.zeros((0, 0), np.float32)
    found: dict[int, np.ndarray] = {}
    pool = pool_scores_for(ws, model_id)
    if pool is not None:
        index = {int(i): r for r, i in enumerate(pool.image_ids)}
        found.update({i: pool.embeddings[index[i]] for i in want if i in index})
    folder = model_folder(ws, model_id)
    extra_path = folder / COVERED_EMBEDDINGS_FILE
    extra_ids, extra_vecs = np.zeros(0, np.int64), None
    if extra_path.is_file():
        with np.load(extra_path, allow_pickle=False) as z:
            extra_ids, extra_vecs = z["ids"], z["vectors"]
        index = {int(i): r for r, i in enumerate(extra_ids)}
        found.update({i: extra_vecs[index[i]] for i in want if i in index and i not in found})
    missing = [i for i in want if i not in found]
    if missing:
        model, meta = load_model(ws, model_id)
        image_size = int(meta.get("image_size") or ws.config.cache_size)
        engine = choose_backend(ws, model, model_id, image_size, backend, threads=threads)
        with ws.store() as store:
            records = {r.id: r for r in store.images(missing)}
        rows = [records[i].cache_row for i in missing]
        if any(r is None for r in rows):
            raise ScoringError("some labelled images have no cached pixels; re-ingest them")
        cache = ImageCache(ws.cache_dir, ws.config.cache_size)
        parts = [engine.predict(cache.read(rows[s:s + batch_size]))[1]
                 for s in range(0, len(rows), batch_size)]
        new = np.concatenate(parts).astype(np.float32)
        found.update(dict(zip(missing, new)))
        all_ids = np.concatenate([extra_ids.astype(np.int64), np.asarray(missing, np.int64)])
        all_vecs = new if extra_vecs is None else np.concatenate([extra_vecs, new])
        tmp = folder / (COVERED_EMBEDDINGS_FILE + ".tmp.npz")
        np.savez(tmp, ids=all_ids, vectors=all_vecs.astype(np.float32))
        tmp.replace(extra_path)
    return np.stack([np.asarray(found[i], dtype=np.float32) for i in want])
