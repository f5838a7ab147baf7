"""Jetson bundle: TensorRT-free parts everywhere (arguments, preprocessing = data/preprocess,
postprocessing, bundle contents, the runner's buffer/copy/execute logic for both TensorRT API
generations against an in-process stand-in); real TensorRT + pycuda only where they import."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from data.preprocess import normalise_batch
from models import export as ex
from models.jetson import common
from models.jetson import run_engine as rt
from core import exports as cx
from core.exports import build_jetson_bundle
from models.jetson.bundle import BUNDLE_FILES
from data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from models.onnx_runtime import OnnxClassifier
from tests.conftest import SHARED_REAL
from tests.export_helpers import BACKBONES, SIZE, make_trained_workspace

SPEC = common.Preprocess(size=SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD)


@pytest.fixture(scope="module", params=BACKBONES)
def bundle(request, tmp_path_factory):
    """(workspace, model id, extracted bundle folder, folder of test images as PNG files)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("jetson")
    ws, model_id = make_trained_workspace(root / "ws", n=60, steps=10, backbone=request.param)
    cx.export_onnx(ws, parity_images=16)
    zip_path = build_jetson_bundle(ws, model_id, root / "out")
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(root / "unzipped")
    folder = root / "unzipped" / f"cargroup_jetson_model_{model_id}"
    images_dir = root / "images" / "sub"
    images_dir.mkdir(parents=True)
    _, images = cx.pool_images(ws, 11, seed=4)
    for i, img in enumerate(images):
        Image.fromarray(img).save(images_dir / f"car{i:02d}.png")
    return ws, model_id, folder, images_dir.parent


# -- preprocessing -----------------------------------------------------------------------------
@pytest.mark.parametrize("shape,size", [((64, 64), 64), ((160, 160), 64), ((160, 100), 64),
                                        ((64, 64), 128), ((94, 192), 128), ((37, 250), 96)])
def test_preprocessing_matches_data_preprocess(rng, shape, size) -> None:
    smooth = np.cumsum(rng.integers(-6, 7, (*shape, 3)), axis=1) + rng.integers(0, 256, (1, 1, 3))
    image = np.clip(smooth, 0, 255).astype(np.uint8)
    spec = common.Preprocess(size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    ref = normalise_batch(image[None], size)
    got = common.normalise([image], spec)
    assert got.shape == ref.shape == (1, 3, size, size) and got.dtype == np.float32
    # area shrink is exact; OpenCV's fixed-point bilinear may differ by one grey level
    one_level = 1.0 / (255 * min(IMAGENET_STD)) + 1e-5
    assert np.max(np.abs(got - ref)) <= one_level
    if shape == (size, size) or min(shape) > size:
        np.testing.assert_allclose(got, ref, atol=1e-5)


def test_preprocessing_matches_on_real_photos() -> None:
    folder = SHARED_REAL / "type" / "images"
    if not folder.is_dir():
        pytest.skip(f"real data not available at {folder}")
    for path in sorted(folder.glob("*.jpg"))[:10]:
        image = common.load_image(path)
        for size in (64, 128, 224):
            spec = common.Preprocess(size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
            diff = np.abs(common.normalise([image], spec) - normalise_batch(image[None], size))
            assert diff.max() <= 1.0 / (255 * min(IMAGENET_STD)) + 1e-5


def test_preprocess_spec_validation() -> None:
    spec = common.Preprocess.from_dict(ex.preprocess_spec(96))
    assert spec.size == 96 and spec.input == "image" and spec.channel_order == "RGB"
    with pytest.raises(ValueError, match="unsupported"):
        common.Preprocess.from_dict({**ex.preprocess_spec(96), "layout": "NHWC"})
    bgr = common.Preprocess.from_dict({**ex.preprocess_spec(4), "channel_order": "bgr"})
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0] = 255
    out = common.normalise([img], bgr)
    assert out[0, 2].max() > out[0, 0].max()  # red moved to the last channel


# -- postprocessing, arguments, inputs ---------------------------------------------------------
def test_postprocess_top_k_and_errors() -> None:
    labels = {"color": ["red", "blue", "green"], "type": ["car", "van"]}
    outputs = {"color": np.array([[0.0, 3.0, 1.0], [5.0, 0.0, 0.0]]),
               "type": np.array([[0.0, 0.0], [-2.0, 2.0]]), "embedding": np.zeros((2, 512))}
    preds = common.postprocess(outputs, labels, top_k=2)
    assert [p[0] for p in preds[0]["color"]] == ["blue", "green"]
    assert preds[1]["color"][0][0] == "red" and preds[1]["color"][0][1] > 0.98
    assert preds[0]["type"][0][1] == pytest.approx(0.5)
    line = common.format_prediction("a.jpg", preds[1])
    assert line.startswith("a.jpg") and "color=red" in line and "type=van" in line
    with pytest.raises(KeyError, match="no output"):
        common.postprocess({"color": outputs["color"]}, labels)
    with pytest.raises(ValueError, match="classes"):
        common.postprocess(outputs, {"color": ["red", "blue"], "type": ["car", "van"]})


def test_argument_parsing() -> None:
    args = common.build_engine_parser().parse_args(["--batch", "2,16,64", "--fp32"])
    assert args.batch == (2, 16, 64) and args.fp32 and args.onnx == "model.onnx"
    assert common.build_engine_parser().parse_args([]).batch == (1, 8, 32)
    for bad in ("8,4,16", "1,2", "a,b,c", "0,1,2"):
        with pytest.raises(SystemExit):
            common.build_engine_parser().parse_args(["--batch", bad])
    args = common.run_engine_parser().parse_args(["imgs/", "x.jpg", "--batch-size", "4", "--json", "o.json"])
    assert args.inputs == ["imgs/", "x.jpg"] and args.batch_size == 4 and args.engine.endswith(".engine")


def test_list_images_chunks_latency(tmp_path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/1.jpg", "a/b/2.PNG", "a/notes.txt", "3.jpeg"):
        (tmp_path / name).write_bytes(b"x")
    found = common.list_images([tmp_path / "a", tmp_path / "3.jpeg"])
    assert [p.name for p in found] == ["1.jpg", "2.PNG", "3.jpeg"]
    with pytest.raises(FileNotFoundError):
        common.list_images([tmp_path / "missing"])
    assert [list(c) for c in common.chunks([1, 2, 3, 4, 5], 2)] == [[1, 2], [3, 4], [5]]
    s = common.latency_summary([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s["median_ms"] == 3.0 and s["min_ms"] == 1.0 and s["p90_ms"] == 5.0 and s["n"] == 5
    assert common.latency_summary([]) == {"n": 0}


# -- bundle ------------------------------------------------------------------------------------
def test_bundle_contents(bundle) -> None:
    ws, model_id, folder, _ = bundle
    assert sorted(p.name for p in folder.iterdir()) == sorted(BUNDLE_FILES)
    labels = common.load_labels(folder / "labels.json")
    assert labels == {a: list(ws.schema.classes[a]) for a in ws.schema.attributes}
    spec = common.load_preprocess(folder / "preprocess.json")
    assert spec.size == SIZE and spec.mean == pytest.approx(IMAGENET_MEAN)
    assert (folder / "model.onnx").read_bytes() == (cx.export_dir(ws, model_id) / "model.onnx").read_bytes()
    req = (folder / "requirements-jetson.txt").read_text()
    assert "pycuda" in req and "tensorrt" in req
    assert "build_engine.py" in (folder / "README.md").read_text()
    info = json.loads((folder / "labels.json").read_text())
    with ws.store() as store:
        row = next(m for m in store.models() if m["id"] == model_id)
    assert info["backbone"] == row["backbone"] and info["weights_origin"] == row["weights_origin"]


def test_bundle_needs_published_export(tmp_path) -> None:
    ws, _ = make_trained_workspace(tmp_path / "ws", n=6, steps=1)
    with pytest.raises(ex.ExportError, match="no published ONNX export"):
        build_jetson_bundle(ws)


@pytest.mark.parametrize("script", ["build_engine.py", "run_engine.py"])
def test_device_scripts_are_standalone(bundle, script) -> None:
    """Run from the unzipped folder with a clean path: only common.py beside them is imported."""
    _, _, folder, _ = bundle
    proc = subprocess.run([sys.executable, "-E", "-s", script, "--help"], cwd=folder, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


def test_device_preprocessing_with_onnxruntime_matches_repo(bundle) -> None:
    """Bundle files alone (preprocess.json + common.py + model.onnx) give the repo's predictions."""
    _, _, folder, images_dir = bundle
    paths = common.list_images([images_dir])
    spec = common.load_preprocess(folder / "preprocess.json")
    labels = common.load_labels(folder / "labels.json")
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    batch = common.normalise([common.load_image(p) for p in paths], spec)
    outputs = dict(zip(names, sess.run(None, {spec.input: batch})))
    device = common.postprocess(outputs, labels)
    repo_probs, _ = OnnxClassifier(folder / "model.onnx").predict(
        np.stack([common.load_image(p) for p in paths]))
    for i, pred in enumerate(device):
        for a in labels:
            assert pred[a][0][0] == labels[a][int(repo_probs[a][i].argmax())]
            assert pred[a][0][1] == pytest.approx(float(repo_probs[a][i].max()), abs=1e-5)


# -- the runner against an in-process TensorRT/pycuda stand-in ---------------------------------
class _DeviceAllocation:
    """Like pycuda's DeviceAllocation: int() gives the device address."""

    def __init__(self, addr: int) -> None:
        self.addr = addr

    def __int__(self) -> int:
        return self.addr


class _FakeCuda:
    """pycuda.driver's calls used by the runner; device memory is a dict of byte arrays."""

    def __init__(self) -> None:
        self.memory: dict[int, np.ndarray] = {}
        self.copies: list[str] = []

    def pagelocked_empty(self, count, dtype):
        return np.empty(count, dtype)

    def mem_alloc(self, nbytes):
        addr = 4096 * (len(self.memory) + 1)
        self.memory[addr] = np.zeros(nbytes, np.uint8)
        return _DeviceAllocation(addr)

    @staticmethod
    def _addr(dev) -> int:
        return dev.addr

    def memcpy_htod_async(self, dev, host, stream):
        raw = np.ascontiguousarray(host).view(np.uint8)
        self.memory[self._addr(dev)][:raw.size] = raw
        self.copies.append("htod")

    def memcpy_dtoh_async(self, host, dev, stream):
        host.view(np.uint8)[:] = self.memory[self._addr(dev)][:host.nbytes]
        self.copies.append("dtoh")

    def Stream(self):  # noqa: N802 - pycuda's name
        return SimpleNamespace(handle=1, synchronize=lambda: None)


class _Engine:
    """Runs model.onnx with onnxruntime behind TensorRT-shaped engine/context objects."""

    def __init__(self, onnx_path: str, cuda: _FakeCuda, tensor_api: bool) -> None:
        self.sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        self.cuda = cuda
        inp = self.sess.get_inputs()[0]
        self.names = [inp.name] + [o.name for o in self.sess.get_outputs()]
        self.shapes = [(-1, *inp.shape[1:])] + [(-1, *o.shape[1:]) for o in self.sess.get_outputs()]
        if tensor_api:
            self.num_io_tensors = len(self.names)
        else:
            self.num_bindings = len(self.names)
        self.tensor_api = tensor_api

    # name-based API (TRT 8.5+/10)
    def get_tensor_name(self, i): return self.names[i]
    def get_tensor_mode(self, name): return "IN" if name == self.names[0] else "OUT"
    def get_tensor_shape(self, name): return self.shapes[self.names.index(name)]
    def get_tensor_dtype(self, name): return np.float32
    def get_tensor_profile_shape(self, name, profile): return [(b, *self.shapes[0][1:]) for b in (1, 4, 8)]
    # binding API (TRT 8.x)
    def get_binding_name(self, i): return self.names[i]
    def binding_is_input(self, i): return i == 0
    def get_binding_shape(self, i): return self.shapes[i]
    def get_binding_dtype(self, i): return np.float32
    def get_profile_shape(self, profile, i): return [(b, *self.shapes[0][1:]) for b in (1, 4, 8)]

    def create_execution_context(self):
        return _Context(self) if self.tensor_api else _BindingContext(self)


class _Context:
    def __init__(self, engine: _Engine) -> None:
        self.engine, self.batch, self.addresses = engine, None, {}

    def _shape(self, i):
        return (self.batch, *self.engine.shapes[i][1:])

    def set_input_shape(self, name, shape):
        assert name == self.engine.names[0]
        self.batch = shape[0]

    def get_tensor_shape(self, name):
        return self._shape(self.engine.names.index(name))

    def set_tensor_address(self, name, addr):
        self.addresses[name] = addr

    def _run(self, addr_of):
        mem, names = self.engine.cuda.memory, self.engine.names
        n_in = int(np.prod(self._shape(0)))
        x = mem[addr_of(0)][:n_in * 4].view(np.float32).reshape(self._shape(0))
        for i, value in enumerate(self.engine.sess.run(names[1:], {names[0]: x}), start=1):
            raw = np.ascontiguousarray(value, np.float32).view(np.uint8).ravel()
            mem[addr_of(i)][:raw.size] = raw
        return True

    def execute_async_v3(self, stream_handle):
        return self._run(lambda i: self.addresses[self.engine.names[i]])


class _BindingContext(_Context):
    def set_binding_shape(self, i, shape):
        assert i == 0
        self.batch = shape[0]

    def get_binding_shape(self, i):
        return self._shape(i)

    def execute_async_v2(self, bindings, stream_handle):
        return self._run(lambda i: bindings[i])


def _fake_trt(version: str, cuda: _FakeCuda, tensor_api: bool):
    class Logger:
        WARNING = 2

        def __init__(self, level=None): ...

    class Runtime:
        def __init__(self, logger): ...

        def deserialize_cuda_engine(self, data: bytes):
            return _Engine(data.decode(), cuda, tensor_api)

    return SimpleNamespace(__version__=version, Logger=Logger, Runtime=Runtime, nptype=np.dtype,
                           TensorIOMode=SimpleNamespace(INPUT="IN", OUTPUT="OUT"))


@pytest.mark.parametrize("version,tensor_api", [("10.3.0", True), ("8.2.1", False)])
def test_runner_logic_for_both_tensorrt_apis(bundle, tmp_path, version, tensor_api) -> None:
    _, _, folder, images_dir = bundle
    engine_file = tmp_path / "model.engine"
    engine_file.write_text(str(folder / "model.onnx"))  # the stand-in "engine" names the ONNX
    cuda = _FakeCuda()
    runner = rt.EngineRunner(engine_file, _fake_trt(version, cuda, tensor_api), cuda)
    assert runner.tensor_api is tensor_api and runner.max_batch == 8
    assert runner.input.name == "image" and [t.name for t in runner.outputs][-1] == "embedding"
    spec = common.load_preprocess(folder / "preprocess.json")
    labels = common.load_labels(folder / "labels.json")
    paths = common.list_images([images_dir])
    records, latencies = rt.classify(runner, paths, spec, labels, batch_size=4, warmup=2)
    assert len(records) == 11 and len(latencies) == 3  # 4 + 4 + 3
    assert cuda.copies.count("htod") == 5               # 2 warm-up + 3 timed calls
    repo_probs, _ = OnnxClassifier(folder / "model.onnx").predict(
        np.stack([common.load_image(p) for p in paths]))
    for i, r in enumerate(records):
        assert r["file"] == str(paths[i]) and r["ms_per_image"] > 0
        for a in labels:
            name, prob = r["prediction"][a][0]
            assert name == labels[a][int(repo_probs[a][i].argmax())]
            assert prob == pytest.approx(float(repo_probs[a][i].max()), abs=1e-5)
    with pytest.raises(ValueError, match="outside the engine's profile"):
        runner.infer(np.zeros((9, 3, SIZE, SIZE), np.float32))


def test_runner_main_writes_json(bundle, tmp_path, monkeypatch, capsys) -> None:
    _, _, folder, images_dir = bundle
    engine_file = tmp_path / "model.engine"
    engine_file.write_text(str(folder / "model.onnx"))
    cuda = _FakeCuda()
    monkeypatch.setattr(rt, "load_backends", lambda: (_fake_trt("10.0.1", cuda, True), cuda))
    out = tmp_path / "res.json"
    code = rt.main([str(images_dir), "--engine", str(engine_file), "--labels", str(folder / "labels.json"),
                    "--preprocess", str(folder / "preprocess.json"), "--batch-size", "16",
                    "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "11 images, batch 8" in text and "ms/image" in text  # batch capped at the profile max
    result = json.loads(out.read_text())
    assert len(result["predictions"]) == 11 and result["latency"]["n"] == 2


# -- real TensorRT (Jetson / NVIDIA GPU machines only) -----------------------------------------
def test_tensorrt_engine_matches_onnxruntime(bundle, tmp_path) -> None:
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (Jetson/GPU only; "
                              "see requirements-jetson.txt)")
    pytest.importorskip("pycuda.driver", reason="pycuda is not installed (Jetson/GPU only)")
    try:
        import pycuda.autoinit  # noqa: F401
    except Exception as exc:  # no GPU / driver
        pytest.skip(f"no usable CUDA device: {exc}")
    from models.jetson.build_engine import build_engine

    _, _, folder, images_dir = bundle
    engine = build_engine(folder / "model.onnx", tmp_path / "m.engine", input_name="image",
                          image_size=SIZE, batch=(1, 4, 8), timing_cache=tmp_path / "t.cache", trt=trt)
    assert (tmp_path / "t.cache").stat().st_size > 0
    runner = rt.EngineRunner(engine)
    spec = common.load_preprocess(folder / "preprocess.json")
    labels = common.load_labels(folder / "labels.json")
    paths = common.list_images([images_dir])
    records, _ = rt.classify(runner, paths, spec, labels, batch_size=4, warmup=1)
    repo_probs, _ = OnnxClassifier(folder / "model.onnx").predict(
        np.stack([common.load_image(p) for p in paths]))
    agree = np.mean([r["prediction"]["color"][0][0] == labels["color"][int(repo_probs["color"][i].argmax())]
                     for i, r in enumerate(records)])
    assert agree >= 0.9  # FP16 vs FP32


# -- the engine builder against a TensorRT-shaped stand-in -------------------------------------
def _fake_builder_trt(version: str, *, old_workspace_api: bool, parse_ok: bool = True):
    calls: dict = {"profile": None, "flags": [], "cache_in": None}

    class Config:
        def __init__(self):
            if not old_workspace_api:
                self.set_memory_pool_limit = lambda pool, size: calls.update(pool=(pool, size))

        def set_flag(self, flag):
            calls["flags"].append(flag)

        def add_optimization_profile(self, profile):
            calls["profile"] = profile.shapes

        def create_timing_cache(self, data):
            calls["cache_in"] = data
            return SimpleNamespace(serialize=lambda: data + b"+new")

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            self.shapes = (name, lo, opt, hi)

    network = SimpleNamespace(num_inputs=1, get_input=lambda i: SimpleNamespace(name="image", shape=(-1, 3, 64, 64)))

    class Builder:
        platform_has_fast_fp16 = True

        def __init__(self, logger): ...

        def create_network(self, flags):
            calls["network_flags"] = flags
            return network

        def create_builder_config(self):
            calls["config"] = Config()
            return calls["config"]

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, net, config):
            return b"ENGINE"

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, net, logger): ...

        def parse(self, data):
            return parse_ok

        def get_error(self, i):
            return "Unsupported operator Foo"

    trt = SimpleNamespace(
        __version__=version, Logger=type("Logger", (), {"VERBOSE": 0, "WARNING": 2, "__init__": lambda s, l: None}),
        Builder=Builder, OnnxParser=Parser,
        NetworkDefinitionCreationFlag=SimpleNamespace(EXPLICIT_BATCH=0),
        MemoryPoolType=SimpleNamespace(WORKSPACE="WS"), BuilderFlag=SimpleNamespace(FP16="FP16"))
    return trt, calls


@pytest.mark.parametrize("version,old_api,flags", [("10.3.0", False, 0), ("8.5.2", False, 1), ("8.2.1", True, 1)])
def test_build_engine_logic(tmp_path, version, old_api, flags) -> None:
    from models.jetson.build_engine import build_engine

    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"onnx")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    trt, calls = _fake_builder_trt(version, old_workspace_api=old_api)
    out = build_engine(onnx_file, tmp_path / "m.engine", input_name="image", image_size=64,
                       batch=(1, 8, 32), workspace_mb=256, timing_cache=cache, trt=trt)
    assert out.read_bytes() == b"ENGINE"
    assert calls["network_flags"] == flags              # explicit batch only before TRT 10
    assert calls["flags"] == ["FP16"]
    assert calls["profile"] == ("image", (1, 3, 64, 64), (8, 3, 64, 64), (32, 3, 64, 64))
    if old_api:
        assert calls["config"].max_workspace_size == 256 << 20
    else:
        assert calls["pool"] == ("WS", 256 << 20)
    assert calls["cache_in"] == b"old" and cache.read_bytes() == b"old+new"


def test_build_engine_reports_parser_errors_and_wrong_input(tmp_path) -> None:
    from models.jetson.build_engine import build_engine

    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"onnx")
    trt, _ = _fake_builder_trt("10.0.0", old_workspace_api=False, parse_ok=False)
    with pytest.raises(RuntimeError, match="Unsupported operator Foo"):
        build_engine(onnx_file, tmp_path / "e", input_name="image", image_size=64, trt=trt)
    trt, _ = _fake_builder_trt("10.0.0", old_workspace_api=False)
    with pytest.raises(RuntimeError, match="expected one input 'pixels'"):
        build_engine(onnx_file, tmp_path / "e", input_name="pixels", image_size=64, trt=trt,
                     timing_cache=None)
    assert not (tmp_path / "e").exists()
