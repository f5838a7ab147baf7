"""A workspace with a small labelled pool and a briefly trained model, for the export tests.

Why trained (a few SGD steps) rather than random init: parity and int8 agreement are only
meaningful when BatchNorm statistics and heads carry real values and the logits are not all
near-ties. Images are colour patches with noise so the color head learns something in seconds;
the other heads see random labels (partial labels, as in real projects).

``backbone`` picks the network under the heads: ResNet18 from random init (as before) or
EfficientNet-Lite0 from its shipped ImageNet weights, so every export path is tested on both.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from data.workspace import Workspace, WorkspaceConfig
from data.cache import ImageCache
from data.preprocess import normalise_batch
from models.backbones import load_backbone
from models.checkpoint import model_meta, save_checkpoint
from models.network import MultiHeadNet

BACKBONES = ("resnet18", "efficientnet_lite0")

SIZE = 64
# Class colours for the first few color classes of the default schema.
PALETTE = np.array([[20, 20, 20], [30, 60, 200], [200, 30, 30], [40, 170, 50], [230, 230, 230]],
                   dtype=np.float32)


def make_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images with a coloured car-ish block on a noisy background, class index per image)."""
    cls = rng.integers(0, len(PALETTE), n)
    base = rng.normal(120, 40, (n, SIZE, SIZE, 3))
    y0, x0 = SIZE // 4, SIZE // 8
    block = PALETTE[cls][:, None, None, :] + rng.normal(0, 15, (n, SIZE // 2, 3 * SIZE // 4, 3))
    base[:, y0:y0 + SIZE // 2, x0:x0 + 3 * SIZE // 4] = block
    return np.clip(base, 0, 255).astype(np.uint8), cls


def make_trained_workspace(root: Path, n: int = 180, steps: int = 25, seed: int = 0,
                           backbone: str = "resnet18") -> tuple[Workspace, int]:
    """Pool of ``n`` images (train/val/test round robin), colour labels, a trained current model."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    ws = Workspace(root).init(WorkspaceConfig(cache_size=SIZE))
    schema = ws.schema
    images, cls = make_images(n, rng)
    colors = [schema.classes["color"][k] for k in range(len(PALETTE))]
    rows = ImageCache(ws.cache_dir, SIZE).append(images)
    splits = ("train", "val", "test")
    with ws.store() as store:
        for i, row in enumerate(rows):
            image_id, _ = store.add_image(
                path=f"pool/img{i:04d}.png", name=f"img{i:04d}.png",
                sha256=hashlib.sha256(images[i].tobytes()).hexdigest(), width=SIZE, height=SIZE,
                nbytes=SIZE * SIZE * 3, split=splits[i % 3], cache_row=row)
            store.add_label(image_id, {"color": colors[cls[i]]}, source="import")

    model = MultiHeadNet(schema, backbone=load_backbone(
        backbone, pretrained=backbone != "resnet18"))
    train_idx = np.arange(0, n, 3)
    x = torch.from_numpy(normalise_batch(images[train_idx], SIZE))
    y = torch.from_numpy(cls[train_idx])
    other = {a: torch.from_numpy(rng.integers(0, schema.num_classes(a), len(train_idx)))
             for a in schema.attributes if a != "color"}
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(steps):
        idx = torch.from_numpy(rng.choice(len(train_idx), min(32, len(train_idx)), replace=False))
        out = model(x[idx])
        loss = torch.nn.functional.cross_entropy(out["color"], y[idx])
        loss = loss + 0.1 * sum(torch.nn.functional.cross_entropy(out[a], t[idx]) for a, t in other.items())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    rel = Path("models") / "m_export" / "model.pt"
    origin = model.weights_origin
    save_checkpoint(ws.root / rel, model, model_meta(
        schema, SIZE, origin="test: few SGD steps", backbone=backbone, weights_origin=origin))
    with ws.store() as store:
        model_id = store.add_model(str(rel), backbone=backbone, weights_origin=origin.to_dict())
    return ws, model_id
