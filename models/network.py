"""Three-head ResNet18: one shared torchvision backbone, one linear softmax head per attribute.

Heads are sized from the :class:`~data.schema.LabelSchema`, and ``forward`` returns a dict of
logits keyed by attribute name, so adding a class to the schema never touches this file.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from data.schema import LabelSchema

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


class MultiHeadResNet(nn.Module):
    """ResNet18 features -> dropout -> {attribute: Linear(512, K_attribute)}."""

    def __init__(self, schema: LabelSchema, *, dropout: float = 0.2,
                 backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.attributes = list(schema.attributes)
        self.class_names = {a: list(schema.classes[a]) for a in self.attributes}
        net = backbone if backbone is not None else resnet18(weights=None)
        feat_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.backbone = net
        self.dropout = nn.Dropout(dropout)
        self.heads = HeadDict(
            {a: nn.Linear(feat_dim, schema.num_classes(a)) for a in self.attributes})

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (N, 512), used for diversity sampling."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.dropout(self.backbone(x))
        return {a: head(feats) for a, head in self.heads.items()}

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        emb = self.backbone(x)
        feats = self.dropout(emb)
        return {a: head(feats) for a, head in self.heads.items()}, emb


def build_model(schema: LabelSchema, *, pretrained: bool = True,
                checkpoint: str | Path | None = None, dropout: float = 0.2) -> tuple[MultiHeadResNet, str]:
    """Create the network; returns (model, a sentence saying where the weights came from).

    Pretrained ImageNet weights come through torchvision's weights API. With no network (as on
    the build machines) that fails; we log one clear warning and continue from random init, or
    from ``checkpoint`` (a local torchvision-style ResNet18 state dict or one of our checkpoints).
    """
    origin = "random init"
    backbone = resnet18(weights=None)
    if checkpoint is not None:
        state = torch.load(Path(checkpoint), map_location="cpu", weights_only=True)
        state = state.get("model_state", state) if isinstance(state, dict) else state
        backbone_state = {k.removeprefix("backbone."): v for k, v in state.items()
                          if not k.startswith(("heads.", "fc."))}
        missing, _ = backbone.load_state_dict(backbone_state, strict=False)
        if [m for m in missing if not m.startswith("fc.")]:
            raise ValueError(f"checkpoint {checkpoint} is not a ResNet18 state dict")
        origin = f"backbone from local checkpoint {checkpoint}"
    elif pretrained:
        try:
            backbone = resnet18(weights=ResNet18_Weights.IMAGENET1K_V1)
            origin = "ImageNet-pretrained (torchvision IMAGENET1K_V1)"
        except Exception as exc:  # offline: URLError, OSError, hash mismatch...
            log.warning("ImageNet weights could not be loaded (%s: %s); training from random "
                        "init. Pass a local checkpoint to start from pretrained weights.",
                        type(exc).__name__, exc)
            origin = "random init (pretrained weights unavailable offline)"
    model = MultiHeadResNet(schema, dropout=dropout, backbone=backbone)
    return model, origin
