"""The auto-annotation function module, with a tiny ONNX export of MultiHeadResNet."""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch import nn

import cvat_sdk.auto_annotation as cvataa
from cvat_helpers import CvatTestServer, add_pool, fast_settings
from data.schema import DEFAULT_SCHEMA
from cvat_bridge import auto_annotation
from cvat_bridge.client import connect
from cvat_bridge.push import push_round
from data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from models.network import MultiHeadResNet

logging.getLogger("cvat_bridge").setLevel(logging.ERROR)
SIZE = 32


class TinyBackbone(nn.Module):
    """A few-parameter stand-in for ResNet18 (same `fc.in_features` contract)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


class _Outputs(nn.Module):
    def __init__(self, model: MultiHeadResNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        logits, emb = self.model.forward_with_embedding(x)
        return (*(logits[a] for a in self.model.attributes), emb)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    """Export with the contract of models/export.py: names + cargroup.* metadata."""
    torch.manual_seed(0)
    model = MultiHeadResNet(DEFAULT_SCHEMA, backbone=TinyBackbone()).eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    outputs = [*model.attributes, "embedding"]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(_Outputs(model), (torch.zeros(1, 3, SIZE, SIZE),), str(path),
                          dynamo=False, input_names=["image"], output_names=outputs,
                          dynamic_axes={n: {0: "batch"} for n in ["image", *outputs]},
                          opset_version=17)
    proto = onnx.load(str(path))
    for key, value in {
        "cargroup.schema": json.dumps({a: list(c) for a, c in DEFAULT_SCHEMA.classes.items()}),
        "cargroup.preprocess": json.dumps({"size": SIZE, "mean": list(IMAGENET_MEAN),
                                           "std": list(IMAGENET_STD), "scale": 1 / 255,
                                           "channel_order": "RGB", "layout": "NCHW"}),
    }.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path


class _Ctx(cvataa.DetectionFunctionContext):
    def __init__(self, threshold: float | None = None) -> None:
        self._t = threshold

    frame_name = property(lambda self: "x.jpg")
    conf_threshold = property(lambda self: self._t)
    conv_mask_to_poly = property(lambda self: False)


def test_spec_is_a_vehicle_tag_with_schema_selects(monkeypatch):
    monkeypatch.delenv(auto_annotation.ENV_MODEL, raising=False)
    monkeypatch.setattr(auto_annotation, "_default", None)
    spec = auto_annotation.spec
    assert isinstance(spec, cvataa.DetectionFunctionSpec)
    [label] = spec.labels
    assert label.name == "vehicle" and label.type == "tag"
    assert [(a.name, str(a.input_type), list(a.values)) for a in label.attributes] == [
        (a, "select", list(DEFAULT_SCHEMA.classes[a])) for a in DEFAULT_SCHEMA.attributes]


def test_detect_returns_one_tag_matching_the_model(tiny_onnx):
    import onnxruntime as ort
    fn = auto_annotation.create(model_path=str(tiny_onnx), threads=1)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 56, 3), np.uint8))
    [tag] = fn.detect(_Ctx(), image)
    assert tag.label_id == 0 and tag.frame == 0
    got = {list(fn.classes)[a.spec_id]: a.value for a in tag.attributes}
    # Reference: the same preprocessing by hand, run through onnxruntime directly.
    arr = np.asarray(image.resize((SIZE, SIZE), Image.BILINEAR), np.float32) / 255.0
    x = ((arr - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None].astype(np.float32)
    sess = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": x})))
    for attr in DEFAULT_SCHEMA.attributes:
        assert got[attr] in DEFAULT_SCHEMA.classes[attr]
        probs = np.exp(outs[attr][0] - outs[attr][0].max())
        probs /= probs.sum()
        # resize filters differ slightly; the chosen class must be (near-)top.
        assert probs[DEFAULT_SCHEMA.index(attr, got[attr])] >= probs.max() - 0.05
    assert fn.detect(_Ctx(threshold=1.0), image) == []


def test_missing_model_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(auto_annotation.ENV_MODEL, raising=False)
    fn = auto_annotation.create()
    with pytest.raises(cvataa.BadFunctionError, match=auto_annotation.ENV_MODEL):
        fn.detect(_Ctx(), Image.new("RGB", (8, 8)))


def test_sdk_driver_annotates_a_pushed_task(tiny_onnx, workspace, tmp_path, monkeypatch):
    """cvat_sdk.auto_annotation.annotate_task (what cvat-cli auto-annotate runs) end to end."""
    monkeypatch.setenv(auto_annotation.ENV_MODEL, str(tiny_onnx))
    monkeypatch.setattr(auto_annotation, "_default", None)
    ids = add_pool(workspace, 3)
    with CvatTestServer() as srv, connect(fast_settings(srv.url)) as conn, \
            workspace.store() as store:
        conn.client.config.cache_dir = tmp_path / "sdk-cache"
        number = store.create_round(ids, kind="seed")
        res = push_round(conn, workspace, store, number)
        cvataa.annotate_task(conn.client, res.task_id, auto_annotation, clear_existing=True)
        tags = srv.tags(res.task_id)
    assert sorted(tags) == [0, 1, 2]
    for values in tags.values():
        assert set(values) == set(DEFAULT_SCHEMA.attributes)
        assert all(values[a] in DEFAULT_SCHEMA.classes[a] for a in values)


def test_prefill_command_is_the_documented_route(tiny_onnx, workspace, tmp_path, monkeypatch,
                                                 capsys):
    """`python -m core cvat prefill --task N --model M` against a 2.23 server (defect 5)."""
    from core.cli import main
    from cvat_bridge.pull import pull
    from cvat_helpers import PASSWORD

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(auto_annotation.ENV_MODEL, raising=False)
    ids = add_pool(workspace, 3)
    with CvatTestServer() as srv:
        with connect(fast_settings(srv.url)) as conn, workspace.store() as store:
            res = push_round(conn, workspace, store, store.create_round(ids, kind="seed"))
        monkeypatch.setenv("CVAT_HOST", srv.url)
        monkeypatch.setenv("CVAT_USERNAME", "admin")
        monkeypatch.setenv("CVAT_PASSWORD", PASSWORD)
        base = ["--workspace", str(workspace.root), "cvat", "--poll", "0.02", "prefill",
                "--task", str(res.task_id)]
        assert main(base) == 2                                  # no model: one clear line
        assert "--model" in capsys.readouterr().err
        assert main([*base, "--model", str(tiny_onnx)]) == 0
        assert "3 tag(s)" in capsys.readouterr().out
        with srv.state.lock:
            sources = {t["source"] for t in srv.state.tasks[res.task_id]["tags"]}
        assert sources == {"auto"} and sorted(srv.tags(res.task_id)) == [0, 1, 2]
        with connect(fast_settings(srv.url)) as conn, workspace.store() as store:
            [r] = pull(conn, workspace, store)
        assert r.report.counts["held"] == 3 and r.report.counts["imported"] == 0
