"""Multi-head network: one shared backbone (see :mod:`models.backbones`), one linear softmax
head per attribute.

Heads are sized from the :class:`~data.schema.LabelSchema`, and ``forward`` returns a dict of
logits keyed by attribute name, so adding a class to the schema never touches this file. The
backbone is any feature extractor mapping ``(N, 3, H, W)`` to ``(N, D)``; the model remembers the
backbone's name and where its starting weights came from, so checkpoints and exports can say so.

Mirror views (``mirror_perms``): in eval mode the network also looks at the image mirrored
left-right and averages the two views' class probabilities, the mirror view's classes mapped
back through ``mirror_perms[attribute]`` (left <-> right for orientation, the identity for colour
and type). ``forward`` then returns log-probabilities, which every consumer treats as logits
(``softmax(log p) == p``), so evaluation, scoring, the ONNX export and its parity check all see
the averaged prediction without knowing about it. It costs a second backbone pass at inference.
The embedding returned beside the logits is the plain view's, so diversity selection and the
MC-dropout samples that pool scoring draws for BALD (:mod:`core.scoring`) use the plain view.
Training mode runs the plain view only (the training set is mirrored at random instead,
:class:`data.dataset.LabelledImageDataset`). Why: docs/BENCHMARKS.md, "Mirror views".
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from data.schema import LabelSchema
from models.backbones import (DEFAULT_BACKBONE, Backbone, WeightsOrigin, build_architecture,
                              load_backbone)

log = logging.getLogger(__name__)

class HeadDict(nn.ModuleDict):
    """A ModuleDict keyed by attribute name that accepts any name.

    Attribute names such as ``type`` clash with ``nn.Module`` members (``ModuleDict.type``),
    which ``add_module`` refuses, so each head is registered as ``head_<name>`` and looked up,
    iterated and listed by the plain name (``heads["type"]``, ``heads.items()``).
    """

    PREFIX = "head_"

    def __getitem__(self, key: str) -> nn.Module:
        return self._modules[self.PREFIX + key]

    def __setitem__(self, key: str, module: nn.Module) -> None:
        self.add_module(self.PREFIX + key, module)

    def __delitem__(self, key: str) -> None:
        del self._modules[self.PREFIX + key]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.PREFIX + key in self._modules

    def __iter__(self):
        return (k[len(self.PREFIX):] for k in self._modules)

    def keys(self):
        return list(iter(self))

    def items(self):
        return [(k[len(self.PREFIX):], m) for k, m in self._modules.items()]

    def values(self):
        return list(self._modules.values())


class MultiHeadNet(nn.Module):
    """Backbone features -> dropout -> {attribute: Linear(feature_dim, K_attribute)}.

    ``backbone`` is a :class:`~models.backbones.Backbone` (name, module, feature size, origin),
    a bare feature module with a ``feature_dim`` attribute, or a torchvision-style classifier
    whose ``fc`` is replaced by the identity; None gives a randomly initialised ResNet18.
    """

    def __init__(self, schema: LabelSchema, *, dropout: float = 0.2,
                 backbone: Backbone | nn.Module | None = None,
                 mirror_perms: Mapping[str, Sequence[int]] | None = None) -> None:
        super().__init__()
        self.attributes = list(schema.attributes)
        self.class_names = {a: list(schema.classes[a]) for a in self.attributes}
        self.backbone_name = DEFAULT_BACKBONE
        self.weights_origin: WeightsOrigin | None = None
        if backbone is None:
            backbone = Backbone(DEFAULT_BACKBONE, build_architecture(DEFAULT_BACKBONE), 512,
                                WeightsOrigin(DEFAULT_BACKBONE, "random", "random init"))
        if isinstance(backbone, Backbone):
            net, feat_dim = backbone.module, backbone.feature_dim
            self.backbone_name, self.weights_origin = backbone.name, backbone.origin
        elif isinstance(getattr(backbone, "fc", None), nn.Linear):
            net, feat_dim = backbone, backbone.fc.in_features
            net.fc = nn.Identity()
        else:
            net, feat_dim = backbone, int(getattr(backbone, "feature_dim"))
        self.feature_dim = int(feat_dim)
        self.backbone = net
        self.dropout = nn.Dropout(dropout)
        self.heads = HeadDict(
            {a: nn.Linear(self.feature_dim, schema.num_classes(a)) for a in self.attributes})
        self.mirror_perms: dict[str, list[int]] | None = None
        self.set_mirror_views(mirror_perms)

    def set_mirror_views(self, perms: Mapping[str, Sequence[int]] | None) -> None:
        """Turn mirror views on (``{attribute: class permutation}``) or off (None)."""
        if perms is None:
            self.mirror_perms = None
            return
        out = {}
        for a in self.attributes:
            perm = [int(k) for k in perms.get(a, range(len(self.class_names[a])))]
            if sorted(perm) != list(range(len(self.class_names[a]))):
                raise ValueError(f"mirror permutation for {a!r} is not a permutation: {perm}")
            out[a] = perm
        self.mirror_perms = out

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (N, feature_dim), used for diversity sampling."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_with_embedding(x)[0]

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(logits per head, plain-view embedding); with mirror views in eval mode the "logits"
        are the log of the two views' mean probabilities (see the module docstring)."""
        emb = self.backbone(x)
        feats = self.dropout(emb)
        logits = {a: head(feats) for a, head in self.heads.items()}
        if self.mirror_perms is None or self.training:
            return logits, emb
        mirrored = self.dropout(self.backbone(torch.flip(x, dims=[3])))
        out = {}
        for a, head in self.heads.items():
            p = torch.softmax(logits[a], dim=1)
            q = torch.softmax(head(mirrored), dim=1)[:, self.mirror_perms[a]]
            out[a] = torch.log((0.5 * (p + q)).clamp_min(1e-12))
        return out, emb


#: The network was ResNet18-only; the old name stays so existing code and tests keep working.
MultiHeadResNet = MultiHeadNet


def build_model(schema: LabelSchema, *, backbone: str = DEFAULT_BACKBONE, pretrained: bool = True,
                weights: str | Path | None = None, checkpoint: str | Path | None = None,
                dropout: float = 0.2, mirror_perms: Mapping[str, Sequence[int]] | None = None
                ) -> tuple[MultiHeadNet, WeightsOrigin]:
    """Create the network; returns (model, where the backbone's weights came from).

    ``weights`` (``checkpoint`` is its old name) is a local file, verified against the
    backbone's architecture (a wrong file raises UserError). Without it, ``pretrained`` loads the
    ImageNet weights (see :func:`models.backbones.load_backbone`); when they cannot be loaded the
    origin's kind is ``random`` and one warning is logged. Deciding whether random init is
    acceptable is the caller's job (training refuses it unless ``pretrained=False``).
    """
    path = weights if weights is not None else checkpoint
    bb = load_backbone(backbone, pretrained=pretrained, weights_path=path)
    model = MultiHeadNet(schema, dropout=dropout, backbone=bb, mirror_perms=mirror_perms)
    return model, bb.origin
