"""Network heads, the offline fallback, and checkpoint save/load/atomicity."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from data.errors import UserError
from data.schema import DEFAULT_SCHEMA, LabelSchema
from core.registry import load_model
from models import checkpoint as ckpt
from models.network import MultiHeadResNet, build_model

REPO = Path(__file__).resolve().parents[1]

CUSTOM = LabelSchema(classes={"color": ("red", "blue", "other"), "wheels": ("2", "4")})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_heads_sized_from_default_schema() -> None:
    model = MultiHeadResNet(DEFAULT_SCHEMA).eval()
    with torch.no_grad():
        out, emb = model.forward_with_embedding(torch.zeros(2, 3, 32, 32))
    assert list(out) == ["color", "type", "orientation"]
    assert {a: tuple(t.shape) for a, t in out.items()} == {
        "color": (2, 10), "type": (2, 8), "orientation": (2, 8)}
    assert tuple(emb.shape) == (2, 512)


def test_heads_sized_from_custom_schema() -> None:
    model = MultiHeadResNet(CUSTOM).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 32, 32))
    assert {a: t.shape[1] for a, t in out.items()} == {"color": 3, "wheels": 2}
    assert model.class_names == {"color": ["red", "blue", "other"], "wheels": ["2", "4"]}


def test_pretrained_unavailable_warns_once_and_uses_random_init(monkeypatch, caplog) -> None:
    import urllib.error

    import torchvision.models._api as tv_api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    with caplog.at_level("WARNING"):
        model, origin = build_model(DEFAULT_SCHEMA, pretrained=True)
    assert origin.kind == "random" and not origin.pretrained
    assert "random init" in origin.detail and "ImageNet weights could not be loaded" in origin.detail
    warnings = [r for r in caplog.records if "ImageNet weights for resnet18 could not be loaded"
                in r.getMessage()]
    assert len(warnings) == 1 and "efficientnet_lite0" in warnings[0].getMessage()
    assert isinstance(model, MultiHeadResNet) and model.weights_origin == origin


def test_checkpoint_roundtrip_keeps_weights_and_meta(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MultiHeadResNet(CUSTOM).eval()
    meta = ckpt.model_meta(CUSTOM, 48, params={"epochs": 3}, origin="random init")
    path = ckpt.save_checkpoint(tmp_path / "m" / "model.pt", model, meta)
    loaded, meta2 = ckpt.load_checkpoint(path)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for attr in a:
        assert torch.equal(a[attr], b[attr])
    assert meta2["classes"] == {"color": ["red", "blue", "other"], "wheels": ["2", "4"]}
    assert meta2["image_size"] == 48 and meta2["params"] == {"epochs": 3}
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp files left


def test_checkpoint_built_from_channels_last_model_loads(tmp_path: Path) -> None:
    model = MultiHeadResNet(CUSTOM).to(memory_format=torch.channels_last)
    path = ckpt.save_checkpoint(tmp_path / "model.pt", model, ckpt.model_meta(CUSTOM, 32))
    loaded, _ = ckpt.load_checkpoint(path)
    assert loaded.backbone.conv1.weight.is_contiguous()


def test_failed_save_keeps_previous_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "model.pt"
    first = MultiHeadResNet(CUSTOM)
    ckpt.save_checkpoint(path, first, ckpt.model_meta(CUSTOM, 32, origin="first"))
    real_save = torch.save

    def half_then_fail(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(path, MultiHeadResNet(CUSTOM), ckpt.model_meta(CUSTOM, 32, origin="second"))
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    loaded, meta = ckpt.load_checkpoint(path)
    assert meta["origin"] == "first"
    assert torch.equal(loaded.backbone.conv1.weight, first.backbone.conv1.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_process_killed_mid_save_keeps_previous_file(tmp_path: Path) -> None:
    """A real SIGKILL while the new checkpoint is half written leaves the old one loadable."""
    path = tmp_path / "model.pt"
    ckpt.save_checkpoint(path, MultiHeadResNet(CUSTOM), ckpt.model_meta(CUSTOM, 32, origin="old"))
    marker = tmp_path / "writing"
    script = textwrap.dedent(f"""
        import sys, time, torch
        sys.path.insert(0, {str(REPO)!r})
        from data.schema import LabelSchema
        from models import checkpoint as ckpt
        from models.network import MultiHeadResNet
        schema = LabelSchema(classes={{"color": ("red", "blue", "other"), "wheels": ("2", "4")}})
        def slow_save(obj, fh, *a, **k):
            fh.write(b"PK\\x03\\x04" + b"x" * 4096)
            fh.flush()
            open({str(marker)!r}, "w").close()
            time.sleep(60)
        ckpt.torch.save = slow_save
        ckpt.save_checkpoint({str(path)!r}, MultiHeadResNet(schema), ckpt.model_meta(schema, 32, origin="new"))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "child exited before writing"
            assert time.monotonic() < deadline, "child never started writing"
            time.sleep(0.05)
        proc.kill()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    _, meta = ckpt.load_checkpoint(path)
    assert meta["origin"] == "old"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".model.pt.")]
    assert leftovers, "the half-written temp file should be beside, not over, the model"


def test_load_model_current_and_by_id(workspace) -> None:
    schema = workspace.schema
    paths = []
    with workspace.store() as store:
        for origin in ("a", "b"):
            p = workspace.models_dir / origin / "model.pt"
            ckpt.save_checkpoint(p, MultiHeadResNet(schema), ckpt.model_meta(schema, 32, origin=origin))
            paths.append(store.add_model(str(p.relative_to(workspace.root))))
    _, meta = load_model(workspace)
    assert meta["origin"] == "b" and meta["model_id"] == paths[1]
    _, meta = load_model(workspace, paths[0])
    assert meta["origin"] == "a" and Path(meta["model_dir"]).name == "a"
    with pytest.raises(UserError):
        load_model(workspace, 999)


def test_load_model_without_any_model_is_a_user_error(workspace) -> None:
    with pytest.raises(UserError, match="no trained model"):
        load_model(workspace)
