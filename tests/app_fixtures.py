"""A tiny labelled workspace with a trained model and a ranked queue, for the app's tests.

Built through the real capability code (ingest, sampling, training, evaluation, queue) so the
pages are tested against what those modules actually store. Images are 32 px and one epoch is
trained, so the whole build takes a few seconds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from core.schema import DEFAULT_CLASSES
from core.workspace import Workspace, WorkspaceConfig

COLORS = {"red": (200, 30, 30), "blue": (30, 40, 200), "white": (235, 235, 235),
          "black": (20, 20, 20)}
VIEWS = ("left", "right", "front", "back")


def write_images(folder: Path, n: int, seed: int = 0, size: int = 32) -> dict[str, dict[str, str]]:
    """Toy crops (body colour = colour label, a marker placed by the view) as PNG files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    q = size // 4
    for k in range(n):
        color, view = str(rng.choice(list(COLORS))), str(rng.choice(VIEWS))
        img = rng.integers(90, 140, (size, size, 3)).astype(np.uint8)
        img[q:3 * q, q // 2:size - q // 2] = COLORS[color]
        box = {"left": (slice(q, 3 * q), slice(0, q)), "right": (slice(q, 3 * q), slice(size - q, size)),
               "front": (slice(0, q), slice(q, 3 * q)), "back": (slice(size - q, size), slice(q, 3 * q))}
        img[box[view]] = (255, 255, 0)
        name = f"car_{k:03d}.png"
        Image.fromarray(img).save(folder / name)
        truth[name] = {"color": color, "type": DEFAULT_CLASSES["type"][k % 3],
                       "orientation": view}
    return truth


def build_pool(root: Path, *, n: int = 60, first_batch: int = 40, seed: int = 0) -> Workspace:
    """Ingested pool with round 0 sampled and labelled (source 'simulated')."""
    from core.sampling import sample_first_batch
    from data.ingest import ingest

    ws = Workspace(root).init(WorkspaceConfig(cache_size=32))
    truth = write_images(root.parent / f"{root.name}_src", n, seed)
    ingest(ws, root.parent / f"{root.name}_src", workers=1)
    with ws.store() as store:
        _, ids = sample_first_batch(store, first_batch, seed=seed)
        for image in store.images(ids):
            store.add_label(image.id, truth[image.name], source="simulated")
    return ws


def build_trained(root: Path, *, queue: int = 8) -> Workspace:
    """:func:`build_pool` plus a 1-epoch model, its test evaluation and a ranked queue."""
    import torch

    from core.queue import build_queue
    from models.evaluate import evaluate
    from models.train import TrainConfig, train

    ws = build_pool(root)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(ws, TrainConfig(epochs=1, batch_size=16, image_size=32, pretrained=False,
                                       num_threads=1))
        evaluate(ws, result.model_id)
        build_queue(ws, "entropy", queue)
    finally:
        torch.set_num_threads(old)
    return ws
