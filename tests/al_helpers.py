"""Small stand-ins for the active-learning tests: a pool of random images and an untrained model.

Why not the demo generator: these tests check ranking plumbing (exclusions, backends, files),
which needs distinct images and a model that runs, not images a model can learn.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from data.workspace import Workspace
from data.cache import ImageCache
from models.checkpoint import model_meta, save_checkpoint
from models.network import build_model


def make_pool(ws: Workspace, n: int, *, seed: int = 0, splits: tuple[str, ...] = ("train",)) -> list[int]:
    """``n`` random images in the cache and the store, split round-robin over ``splits``."""
    rng = np.random.default_rng(seed)
    size = ws.config.cache_size
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    # smooth blobs so images differ in content the network can see, not only in noise
    images[:, : size // 2] = (images[:, : size // 2] // 4 + rng.integers(0, 192, (n, 1, 1, 3))).astype(np.uint8)
    rows = ImageCache(ws.cache_dir, size).append(images)
    ids = []
    with ws.store() as store:
        for i, row in enumerate(rows):
            digest = hashlib.sha256(images[i].tobytes()).hexdigest()
            image_id, _ = store.add_image(path=f"pool/img{i:05d}.png", name=f"img{i:05d}.png",
                                          sha256=digest, width=size, height=size, nbytes=size * size * 3,
                                          split=splits[i % len(splits)], cache_row=row)
            ids.append(image_id)
    return ids


def make_model(ws: Workspace, *, image_size: int = 32, seed: int = 0, head_scale: float = 20.0,
               name: str = "m1") -> int:
    """An untrained model saved as the workspace's current model; returns its id.

    ``head_scale`` spreads the heads' probabilities so rankings have clear gaps.
    """
    torch.manual_seed(seed)
    model, origin = build_model(ws.schema, pretrained=False)
    with torch.no_grad():
        for head in model.heads.values():
            head.weight.mul_(head_scale)
    model.eval()
    rel = Path("models") / name / "model.pt"
    save_checkpoint(ws.root / rel, model, model_meta(ws.schema, image_size, origin=origin))
    with ws.store() as store:
        return store.add_model(str(rel))
