#!/usr/bin/env python3
"""Classify images with the TensorRT engine on a Jetson: predictions per image plus latency.

pycuda does the memory work: page-locked host buffers and device buffers sized for the
engine's largest profile batch are allocated once; each call copies the batch host->device
asynchronously on one CUDA stream, runs the engine, copies the outputs back, and synchronises.
Latency is measured around that whole sequence (what an application sees), after warm-up.

Two TensorRT APIs are supported because JetPack ships both generations:
- TensorRT 10.x (and 8.5+): name-based tensors (``num_io_tensors``, ``set_input_shape``,
  ``set_tensor_address``, ``execute_async_v3``);
- TensorRT 8.x before 8.5 (JetPack 4.6): bindings (``num_bindings``, ``set_binding_shape``,
  ``execute_async_v2``).

    python3 run_engine.py --engine model.fp16.engine --batch-size 8 images/
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

try:  # imported from the repository as models.jetson.run_engine
    from . import common
except ImportError:  # run as a script inside the bundle folder
    import common  # type: ignore[no-redef]


def load_backends() -> tuple[Any, Any]:
    """(tensorrt, pycuda.driver) with a CUDA context on GPU 0 (pycuda.autoinit)."""
    import pycuda.autoinit  # noqa: F401,PLC0415 - creates and pushes the context
    import pycuda.driver as cuda  # noqa: PLC0415
    import tensorrt as trt  # noqa: PLC0415
    return trt, cuda


def uses_tensor_api(engine: Any, context: Any) -> bool:
    """True for the name-based API (TRT >= 8.5, the only one in 10.x)."""
    return hasattr(engine, "num_io_tensors") and hasattr(context, "execute_async_v3")


@dataclass
class IOTensor:
    """One engine input or output with its pinned host and device buffers (max batch)."""

    name: str
    index: int
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]        # engine shape, -1 for the dynamic batch axis
    max_shape: tuple[int, ...]    # shape at the profile's max batch
    host: Any = None
    device: Any = None


class EngineRunner:
    """Loads a serialized engine and runs batches through it (see module docstring)."""

    def __init__(self, engine_path: str | Path, trt: Any = None, cuda: Any = None) -> None:
        if trt is None or cuda is None:
            trt, cuda = load_backends()
        self.trt, self.cuda = trt, cuda
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"could not deserialize {engine_path}: built with another TensorRT "
                               "version or GPU? Rebuild it with build_engine.py on this device")
        self.context = self.engine.create_execution_context()
        self.tensor_api = uses_tensor_api(self.engine, self.context)
        self.tensors = self._describe()
        inputs = [t for t in self.tensors if t.is_input]
        if len(inputs) != 1:
            raise RuntimeError(f"expected one engine input, found {[t.name for t in inputs]}")
        self.input = inputs[0]
        self.outputs = [t for t in self.tensors if not t.is_input]
        self.max_batch = self.input.max_shape[0]
        for t in self.tensors:
            count = int(np.prod(t.max_shape))
            t.host = cuda.pagelocked_empty(count, t.dtype)
            t.device = cuda.mem_alloc(t.host.nbytes)
        self.stream = cuda.Stream()

    # -- engine description, both APIs ---------------------------------------------------------
    def _describe(self) -> list[IOTensor]:
        trt, engine = self.trt, self.engine
        out: list[IOTensor] = []
        if self.tensor_api:
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                shape = tuple(engine.get_tensor_shape(name))
                out.append(IOTensor(name, i, is_input, np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
                                    shape, shape))
            max_batch = self._max_batch(next(t for t in out if t.is_input))
        else:
            for i in range(engine.num_bindings):
                name = engine.get_binding_name(i)
                shape = tuple(engine.get_binding_shape(i))
                out.append(IOTensor(name, i, bool(engine.binding_is_input(i)),
                                    np.dtype(trt.nptype(engine.get_binding_dtype(i))), shape, shape))
            max_batch = self._max_batch(next(t for t in out if t.is_input))
        for t in out:
            t.max_shape = tuple(max_batch if d < 0 else d for d in t.shape)
        return out

    def _max_batch(self, inp: IOTensor) -> int:
        if inp.shape[0] >= 0:  # a static engine
            return int(inp.shape[0])
        if self.tensor_api:
            _, _, hi = self.engine.get_tensor_profile_shape(inp.name, 0)
        else:
            _, _, hi = self.engine.get_profile_shape(0, inp.index)
        return int(tuple(hi)[0])

    # -- inference -----------------------------------------------------------------------------
    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """float32 (N, 3, S, S) normalised -> {output name: array (N, ...)}; N <= max_batch."""
        cuda, ctx, inp = self.cuda, self.context, self.input
        batch = np.ascontiguousarray(batch, dtype=inp.dtype)
        n = len(batch)
        if not 1 <= n <= self.max_batch:
            raise ValueError(f"batch of {n} outside the engine's profile (1..{self.max_batch})")
        shape = (n, *batch.shape[1:])
        if self.tensor_api:
            ctx.set_input_shape(inp.name, shape)
        else:
            ctx.set_binding_shape(inp.index, shape)
        host_in = inp.host[:batch.size]
        host_in[:] = batch.ravel()
        cuda.memcpy_htod_async(inp.device, host_in, self.stream)
        out_shapes = {t.name: tuple(ctx.get_tensor_shape(t.name) if self.tensor_api
                                    else ctx.get_binding_shape(t.index)) for t in self.outputs}
        if self.tensor_api:
            for t in self.tensors:
                ctx.set_tensor_address(t.name, int(t.device))
            ok = ctx.execute_async_v3(stream_handle=self.stream.handle)
        else:
            bindings = [0] * len(self.tensors)
            for t in self.tensors:
                bindings[t.index] = int(t.device)
            ok = ctx.execute_async_v2(bindings=bindings, stream_handle=self.stream.handle)
        if not ok:
            raise RuntimeError("TensorRT execution failed")
        views = {}
        for t in self.outputs:
            count = int(np.prod(out_shapes[t.name]))
            views[t.name] = t.host[:count]
            cuda.memcpy_dtoh_async(views[t.name], t.device, self.stream)
        self.stream.synchronize()
        return {name: v.reshape(out_shapes[name]).copy() for name, v in views.items()}


def classify(runner: EngineRunner, paths: Sequence[Path], spec: common.Preprocess,
             labels: dict[str, list[str]], *, batch_size: int, warmup: int, top_k: int = 1,
             ) -> tuple[list[dict[str, Any]], list[float]]:
    """Predict every image; returns (per-image records, per-call latencies in ms)."""
    batch_size = max(1, min(batch_size, runner.max_batch))
    if paths and warmup:
        sample = common.normalise([common.load_image(paths[0])] * batch_size, spec)
        for _ in range(warmup):
            runner.infer(sample)
    records: list[dict[str, Any]] = []
    latencies: list[float] = []
    for group in common.chunks(list(paths), batch_size):
        batch = common.normalise([common.load_image(p) for p in group], spec)
        start = time.perf_counter()
        outputs = runner.infer(batch)
        ms = (time.perf_counter() - start) * 1000.0
        latencies.append(ms)
        for path, pred in zip(group, common.postprocess(outputs, labels, top_k)):
            records.append({"file": str(path), "prediction": pred, "batch_ms": ms,
                            "ms_per_image": ms / len(group)})
    return records, latencies


def main(argv: Sequence[str] | None = None) -> int:
    args = common.run_engine_parser().parse_args(argv)
    spec = common.load_preprocess(args.preprocess)
    labels = common.load_labels(args.labels)
    paths = common.list_images(args.inputs)
    if not paths:
        print("no images found", file=sys.stderr)
        return 2
    runner = EngineRunner(args.engine)
    records, latencies = classify(runner, paths, spec, labels, batch_size=args.batch_size,
                                  warmup=args.warmup, top_k=args.top_k)
    if not args.quiet:
        for r in records:
            print(common.format_prediction(r["file"], r["prediction"]))
    summary = common.latency_summary(latencies)
    bs = max(1, min(args.batch_size, runner.max_batch))
    print(f"{len(records)} images, batch {bs}, TensorRT {runner.trt.__version__} "
          f"({'tensor' if runner.tensor_api else 'binding'} API): median {summary['median_ms']:.2f} ms "
          f"per call ({summary['median_ms'] / bs:.2f} ms/image), p90 {summary['p90_ms']:.2f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps({"predictions": records, "latency": summary,
                                               "batch_size": bs}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
