"""A tiny labelled workspace with a trained model and a ranked queue, for the app's tests.

Built through the real capability code (demo pool, simulated annotator, sampling, training,
evaluation, queue) so the pages are tested against what those modules actually store. Images are 32 px and one
epoch is trained, so the whole build takes a few seconds.
"""
from __future__ import annotations

from pathlib import Path

from data.workspace import Workspace, WorkspaceConfig


def build_pool(root: Path, *, n: int = 60, first_batch: int = 40, seed: int = 0,
               size: int = 32) -> Workspace:
    """A demo pool (the app's own generator) with round 0 labelled by the simulated annotator."""
    from core.annotator import simulate_labels
    from core.rounds import sample_first_batch
    from data.demo import create_demo_pool

    ws = Workspace(root).init(WorkspaceConfig(cache_size=size))
    create_demo_pool(ws, n, seed=seed, size=size)
    with ws.store() as store:
        number, ids = sample_first_batch(store, first_batch, seed=seed)
        simulate_labels(store, ws.schema, ids, round_id=store.round(number)["id"])
    return ws


def build_trained(root: Path, *, queue: int = 8) -> Workspace:
    """:func:`build_pool` plus a 1-epoch model, its test evaluation and a ranked queue."""
    import torch

    from core.queue import build_queue
    from core.training import train_and_promote
    from models.train import TrainConfig

    ws = build_pool(root)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_and_promote(ws, TrainConfig(epochs=1, batch_size=16, image_size=32,
                                          pretrained=False, num_threads=1))
        build_queue(ws, "entropy", queue)
    finally:
        torch.set_num_threads(old)
    return ws
