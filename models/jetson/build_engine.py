#!/usr/bin/env python3
"""Build a TensorRT engine from the bundle's model.onnx, on the Jetson that will run it.

Why on the device: a TensorRT engine is specific to the GPU and TensorRT version that built it,
so the bundle ships the portable ONNX and this script turns it into ``model.fp16.engine`` there.
FP16 kernels are enabled where the GPU has fast FP16 (every Jetson); the optimisation profile
covers the batch sizes the runner will use; the timing cache makes rebuilds take seconds.

Works with TensorRT 8.x (JetPack 4.6/5.x) and 10.x (JetPack 6): the differences (explicit-batch
flag, workspace limit API) are handled below.

    python3 build_engine.py --onnx model.onnx --engine model.fp16.engine --batch 1,8,32
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Sequence

try:  # imported from the repository as models.jetson.build_engine
    from . import common
except ImportError:  # run as a script inside the bundle folder
    import common  # type: ignore[no-redef]


def trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def build_engine(onnx_path: str | Path, engine_path: str | Path, *, input_name: str, image_size: int,
                 batch: tuple[int, int, int] = (1, 8, 32), fp16: bool = True,
                 workspace_mb: int = 1024, timing_cache: str | Path | None = common.DEFAULT_TIMING_CACHE,
                 verbose: bool = False, trt: Any = None) -> Path:
    """Parse ``onnx_path``, build with FP16 + a batch profile, write the serialized engine."""
    if trt is None:
        import tensorrt as trt  # noqa: PLC0415 - only needed on the device
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if trt_major(trt) < 10:  # TRT 8 needs explicit batch for ONNX; TRT 10 has only explicit batch
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n" + "\n".join(errors))
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    if [t.name for t in inputs] != [input_name]:
        raise RuntimeError(f"expected one input {input_name!r}, the ONNX has {[t.name for t in inputs]}")
    channels = tuple(inputs[0].shape)[1]

    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):  # TRT >= 8.4
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    else:  # TRT 8.0-8.3
        config.max_workspace_size = int(workspace_mb) << 20
    if fp16:
        if getattr(builder, "platform_has_fast_fp16", True):
            config.set_flag(trt.BuilderFlag.FP16)
        else:
            print("warning: this GPU has no fast FP16; building an FP32 engine", file=sys.stderr)

    lo, opt, hi = batch
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (lo, channels, image_size, image_size),
                      (opt, channels, image_size, image_size), (hi, channels, image_size, image_size))
    config.add_optimization_profile(profile)

    cache_path = Path(timing_cache) if timing_cache else None
    if cache_path is not None:
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the log above)")
    engine_path = Path(engine_path)
    engine_path.write_bytes(bytes(serialized))
    if cache_path is not None:
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return engine_path


def main(argv: Sequence[str] | None = None) -> int:
    args = common.build_engine_parser().parse_args(argv)
    spec = common.load_preprocess(args.preprocess)
    import tensorrt as trt  # noqa: PLC0415

    start = time.perf_counter()
    path = build_engine(args.onnx, args.engine, input_name=spec.input, image_size=spec.size,
                        batch=args.batch, fp16=not args.fp32, workspace_mb=args.workspace_mb,
                        timing_cache=args.timing_cache or None, verbose=args.verbose, trt=trt)
    print(f"TensorRT {trt.__version__}: wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, "
          f"{'FP32' if args.fp32 else 'FP16'}, batch profile {args.batch}) in "
          f"{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
