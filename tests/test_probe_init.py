"""Fine-tuning starts its heads from a linear probe on the frozen features (LP-FT, issue 10).

Why it matters: at 100 labels a fine-tuned Lite0 with random heads reached 0.25 on type against
0.61 for a linear head on the same frozen features (docs/BENCHMARKS.md). The probe makes the
network's first forward pass give the probe's answers, so fine-tuning starts where head-only
training ends.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data.dataset import SplitData
from data.errors import UserError
from data.schema import DEFAULT_SCHEMA
from models.backbones import Backbone, WeightsOrigin, build_architecture
from models.embed import embed_images
from models.evaluate import predict_arrays
from models.heads import fit_heads
from models.network import MultiHeadNet
from models.train import UNSEEN_CLASS_BIAS, TrainConfig, probe_heads, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 32


def _split(n: int, seed: int) -> SplitData:
    """Colour blocks the features can tell apart; type labels on half the images only."""
    rng = np.random.default_rng(seed)
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
    names = list(colours)
    images, labels = [], []
    for i in range(n):
        c = names[i % 3]
        img = np.clip(np.array(colours[c]) + rng.normal(0, 12, (SIZE, SIZE, 3)), 0, 255)
        images.append(img.astype(np.uint8))
        lab = {"color": c}
        if i % 2 == 0:
            lab["type"] = "sedan" if i % 4 == 0 else "suv"
        labels.append(lab)
    return SplitData(list(range(n)), np.stack(images), labels)


def _model() -> MultiHeadNet:
    torch.manual_seed(0)
    backbone = Backbone("resnet18", build_architecture("resnet18"), 512,
                        WeightsOrigin("resnet18", "imagenet-file", "test stand-in"))
    return MultiHeadNet(DEFAULT_SCHEMA, backbone=backbone)


def test_probed_heads_answer_as_the_linear_probe(tmp_path) -> None:
    data = _split(30, seed=0)
    model = _model()
    n_train = probe_heads(model, data, DEFAULT_SCHEMA, SIZE)
    assert n_train == {"color": 30, "type": 15, "orientation": 0}
    feats = embed_images(model.backbone, data.images, SIZE)
    probe = fit_heads(feats, data.labels, DEFAULT_SCHEMA.classes, reference=feats)
    probs = predict_arrays(model.eval(), data.images, SIZE, 64).probs
    for attr in ("color", "type"):
        expected = probe.heads[attr].predict_proba(feats)
        assert np.abs(probs[attr] - expected).max() < 1e-3, attr  # unseen: e**-10, not 0
        assert (probs[attr].argmax(1) == expected.argmax(1)).all(), attr
    # classes no label shows are far below the seen ones; a head with no labels is untouched
    color_bias = model.heads["color"].bias.detach().numpy()
    unseen = [i for i, c in enumerate(DEFAULT_SCHEMA.classes["color"])
              if c not in ("red", "blue", "green")]
    assert color_bias[unseen].max() <= UNSEEN_CLASS_BIAS + probe.heads["color"].intercept.min() + 1e-5
    assert (probs["color"].argmax(1) == [DEFAULT_SCHEMA.classes["color"].index(l["color"])
                                         for l in data.labels]).mean() == 1.0


def test_train_probes_only_fresh_pretrained_models_and_refuses_an_unknown_init(tmp_path) -> None:
    data, val = _split(24, seed=1), _split(9, seed=2)
    config = TrainConfig(epochs=1, image_size=SIZE, pretrained=False, batch_size=8, augment=False)
    with pytest.raises(UserError, match="unknown head init"):
        train(data, val, DEFAULT_SCHEMA, tmp_path / "bad", TrainConfig(head_init="magic"))
    # random init on purpose: nothing to probe (its features carry no ImageNet knowledge)
    result = train(data, val, DEFAULT_SCHEMA, tmp_path / "r", config)
    assert result.status == "succeeded"


def test_fine_tuning_must_beat_the_probe_on_validation_to_be_kept(tmp_path) -> None:
    """Epoch 0 is the probe: a fine-tuning that wrecks the features (lr 1.0) is not kept."""
    data, val = _split(24, seed=3), _split(12, seed=4)
    config = TrainConfig(epochs=2, image_size=SIZE, batch_size=8, augment=False, lr=1.0,
                         backbone="efficientnet_lite0", bf16=False)
    result = train(data, val, DEFAULT_SCHEMA, tmp_path / "run", config)
    assert result.status == "succeeded" and result.epochs_run == 2
    assert result.best_epoch == 0, result.history
    assert result.val_acc["color"] >= 0.9           # the probe separates the colour blocks
    assert all(not h["best"] for h in result.history)
