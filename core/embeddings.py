"""The pool's embeddings from a pretrained backbone, computed once and cached in the workspace.

Why: cold-start selection (TypiClust, ProbCover) and head-only refits need a feature vector per
image before any model is trained, and a backbone pass over an 11.5k pool takes minutes on two
cores. So every image with cached pixels is embedded once per (backbone, weights origin, image
size) and kept under ``<workspace>/embeddings/<backbone>_<origin>_<size>px.npz`` (ids, vectors,
origin). New images (a later ingest) are embedded on the next call and appended; nothing else
is recomputed.

Mirror views (``mirrored=True``): the same images flipped left-right, cached beside the plain
ones (``..._<size>px_mirror.npz``). Mirror-aware head refits (:mod:`models.heads`) train and
predict on both views; they double the one-time embedding cost, not the refit's.

The origin is part of the key and of the result: embeddings of a random-init network carry
almost no information, and callers say so to the user (``PoolEmbeddings.pretrained``). A cache
made from random weights is not reused once pretrained weights become loadable.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.balance import flip_image
from data.cache import ImageCache
from data.progress import Progress, ProgressFn
from data.workspace import Workspace
from models.backbones import BACKBONES, WeightsOrigin, load_backbone
from models.embed import embed_images

log = logging.getLogger(__name__)

EMBEDDINGS_DIR = "embeddings"
BATCH = 256


def default_backbone() -> str:
    """EfficientNet-Lite0 (ImageNet weights ship with a package, so it works offline) when
    this install has it, else ResNet18."""
    return "efficientnet_lite0" if "efficientnet_lite0" in BACKBONES else "resnet18"


@dataclass
class PoolEmbeddings:
    """One vector per image: row i of ``vectors`` belongs to image ``ids[i]`` (ids sorted)."""

    ids: np.ndarray            # int64 (N,)
    vectors: np.ndarray        # float32 (N, D)
    backbone: str
    origin: WeightsOrigin
    image_size: int = 0
    computed: int = 0          # how many images this call had to embed (0: all from the cache)
    mirrored: bool = False     # vectors of the images flipped left-right

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def pretrained(self) -> bool:
        return self.origin.pretrained

    def rows(self, image_ids) -> np.ndarray:
        """Row numbers of ``image_ids`` (every id must be present)."""
        want = np.asarray(list(image_ids), dtype=np.int64)
        pos = np.searchsorted(self.ids, want)
        pos = np.clip(pos, 0, max(len(self.ids) - 1, 0))
        if len(want) and (not len(self.ids) or (self.ids[pos] != want).any()):
            raise KeyError("some images have no embedding")
        return pos

    def take(self, image_ids) -> np.ndarray:
        """Vectors of ``image_ids`` in that order, shape ``(len(image_ids), D)``."""
        return self.vectors[self.rows(image_ids)]


def embeddings_dir(ws: Workspace) -> Path:
    return ws.root / EMBEDDINGS_DIR


def _view(mirrored: bool) -> str:
    return "_mirror" if mirrored else ""


def cache_path(ws: Workspace, backbone: str, origin_kind: str, image_size: int,
               mirrored: bool = False) -> Path:
    return embeddings_dir(ws) / f"{backbone}_{origin_kind}_{int(image_size)}px{_view(mirrored)}.npz"


def _load(path: Path, backbone: str, image_size: int, mirrored: bool = False
          ) -> PoolEmbeddings | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            origin = WeightsOrigin(backbone, str(z["origin_kind"]), str(z["origin_detail"]))
            return PoolEmbeddings(z["ids"].astype(np.int64), z["vectors"].astype(np.float32),
                                  backbone, origin, image_size, mirrored=mirrored)
    except (OSError, KeyError, ValueError) as exc:   # a torn or foreign file: recompute
        log.warning("ignoring unreadable embeddings cache %s (%s)", path, exc)
        return None


def _save(path: Path, emb: PoolEmbeddings) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, ids=emb.ids.astype(np.int64), vectors=emb.vectors.astype(np.float32),
             origin_kind=np.asarray(emb.origin.kind), origin_detail=np.asarray(emb.origin.detail))
    tmp.replace(path)   # atomic: a reader sees the old or the new file, never half of one


def _cached(ws: Workspace, backbone: str, image_size: int, mirrored: bool = False
            ) -> list[PoolEmbeddings]:
    """Caches for this backbone, size and view, pretrained ones first."""
    found = []
    pattern = f"{backbone}_*_{int(image_size)}px{_view(mirrored)}.npz"
    for path in sorted(embeddings_dir(ws).glob(pattern)):
        emb = _load(path, backbone, image_size, mirrored)
        if emb is not None and path == cache_path(ws, backbone, emb.origin.kind, image_size,
                                                  mirrored):
            found.append(emb)
    return sorted(found, key=lambda e: not e.pretrained)


def pool_embeddings(ws: Workspace, backbone: str | None = None, image_size: int | None = None,
                    progress: ProgressFn | None = None, *, mirrored: bool = False
                    ) -> PoolEmbeddings:
    """Embeddings of every image with cached pixels, from ``backbone``'s best available weights.

    - ``backbone``: a name from :data:`models.backbones.BACKBONES` (default
      :func:`default_backbone`); ``image_size``: the network's input side (default: the
      workspace's cache size).
    - A pretrained cache is trusted without loading the network when it already covers every
      image. A random-init cache is used only if pretrained weights are still unavailable.
    - Only images missing from the cache are embedded; the cache file is then rewritten.
    - ``mirrored``: the images flipped left-right (a separate cache; see the module docstring).
    """
    name = backbone or default_backbone()
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    size = int(image_size or ws.config.cache_size)
    with ws.store() as store:
        records = [r for r in store.images() if r.cache_row is not None]
    records.sort(key=lambda r: r.id)
    all_ids = np.array([r.id for r in records], dtype=np.int64)

    cached = _cached(ws, name, size, mirrored)
    best = cached[0] if cached else None
    if best is not None and best.pretrained and np.isin(all_ids, best.ids).all():
        return _restrict(best, all_ids)

    net = load_backbone(name)
    if best is not None and best.origin.kind != net.origin.kind:
        # the weights changed (e.g. pretrained weights became loadable): a cache from other
        # weights is not mixed with this one
        best = next((c for c in cached if c.origin.kind == net.origin.kind), None)
    have = best if best is not None else PoolEmbeddings(
        np.zeros(0, np.int64), np.zeros((0, net.feature_dim), np.float32), name, net.origin, size,
        mirrored=mirrored)
    known = set(have.ids.tolist())
    missing = [r for r in records if r.id not in known]
    if not missing:
        return _restrict(have, all_ids)
    if not net.origin.pretrained:
        log.warning("embedding the pool with a random-init %s: selection on these embeddings "
                    "is close to random", name)
    cache = ImageCache(ws.cache_dir, ws.config.cache_size)
    parts = []
    for start in range(0, len(missing), BATCH):
        chunk = missing[start:start + BATCH]
        pixels = cache.read([r.cache_row for r in chunk])
        if mirrored:
            pixels = flip_image(pixels)
        parts.append(embed_images(net.module, pixels, size))
        if progress is not None:
            done = min(start + BATCH, len(missing))
            what = "mirrored images" if mirrored else "images"
            progress(Progress(done / len(missing), f"embedded {done}/{len(missing)} {what} with {name}"))
    new_ids = np.array([r.id for r in missing], dtype=np.int64)
    ids = np.concatenate([have.ids, new_ids])
    vectors = np.concatenate([have.vectors, *parts]).astype(np.float32)
    order = np.argsort(ids, kind="stable")
    out = PoolEmbeddings(ids[order], vectors[order], name, net.origin, size, computed=len(missing),
                         mirrored=mirrored)
    _save(cache_path(ws, name, net.origin.kind, size, mirrored), out)
    return _restrict(out, all_ids)


def _restrict(emb: PoolEmbeddings, ids: np.ndarray) -> PoolEmbeddings:
    """Only the images still in the store (a deleted image's row stays in the file)."""
    if len(emb.ids) == len(ids) and (emb.ids == ids).all():
        return emb
    keep = np.isin(emb.ids, ids)
    return PoolEmbeddings(emb.ids[keep], emb.vectors[keep], emb.backbone, emb.origin,
                          emb.image_size, emb.computed, emb.mirrored)
