"""``export``: ONNX (parity-checked), optional int8 ONNX and Jetson bundle of a trained model."""
from __future__ import annotations

import argparse
from pathlib import Path

from core.commands.project import require_workspace
from data.errors import UserError
from data.workspace import Workspace


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export a model to ONNX (parity-checked); --int8, --jetson for the edge")
    p.add_argument("--model", type=int, default=None, help="model id (default: the current model)")
    p.add_argument("--int8", action="store_true",
                   help="also make a static int8 ONNX for CPUs and compare it with fp32 on the test split")
    p.add_argument("--jetson", action="store_true",
                   help="also write the Jetson bundle zip (ONNX + TensorRT build/run scripts)")
    p.add_argument("--calibration", type=int, default=300,
                   help="pool images used to calibrate int8 ranges (default: 300)")
    p.add_argument("--calibration-method", choices=("minmax", "entropy", "percentile"),
                   default="minmax")
    p.add_argument("--min-agreement", type=float, default=0.90,
                   help="refuse the int8 model if a head's top-1 agrees with fp32 less often (default: 0.90)")
    p.add_argument("--max-drop", type=float, default=0.02,
                   help="refuse the int8 model if a head (>=200 labelled test images) loses more "
                        "accuracy than this fraction (default: 0.02)")
    p.add_argument("--parity-images", type=int, default=64,
                   help="pool images on which ONNX Runtime must match PyTorch (default: 64)")
    p.add_argument("--out", default=None,
                   help="folder that receives every artifact this run made (ONNX, parity report, "
                        "int8 ONNX and report, Jetson zip); a .zip path names the Jetson zip and "
                        "the other files go beside it. The published copies stay in "
                        "exports/model_<id>/")
    p.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace, ws: Workspace) -> int:
    require_workspace(ws)
    # Lazy: torch and onnx load only when a command needs them, so `--help` stays fast.
    from core.exports import (build_jetson_bundle, export_dir, export_onnx, load_parity,
                              quantize_export, resolve_model_id)
    from models.export import PARITY_NAME, copy_artifacts
    from models.quantize import REPORT_NAME

    model_id = resolve_model_id(ws, args.model)
    if args.calibration < 1 or args.parity_images < 1:
        raise UserError("--calibration and --parity-images must be at least 1")
    path = export_onnx(ws, model_id, parity_images=args.parity_images)
    made: list[Path] = [path, export_dir(ws, model_id) / PARITY_NAME]
    parity = load_parity(ws, model_id) or {}
    print(f"model {model_id}: ONNX published at {path}")
    print(f"parity (PyTorch vs ONNX Runtime, {parity.get('n_images', '?')} pool images):")
    for head, diff in parity.get("max_abs_diff", {}).items():
        print(f"  {head}: max |logit diff| {diff:.2e}, argmax agreement "
              f"{parity['argmax_agreement'][head]:.1%}")
    if args.int8:
        int8_path, report = quantize_export(ws, model_id, calibration=args.calibration,
                                            calibrate_method=args.calibration_method,
                                            min_agreement=args.min_agreement, max_drop=args.max_drop)
        print(f"int8 ONNX published at {int8_path} (calibrated on {report.calibration_images} "
              f"pool images; evaluated on {report.n_eval_images} test images)")
        print(report.table())
        made += [int8_path, export_dir(ws, model_id) / REPORT_NAME]
    if args.jetson:
        zip_path = build_jetson_bundle(ws, model_id, args.out)
        print(f"Jetson bundle: {zip_path} (unzip on the device, then build_engine.py; see its README)")
    if args.out is not None:
        out = Path(args.out)
        folder = out.parent if out.suffix == ".zip" else out
        copies = copy_artifacts(made, folder)
        print(f"{len(copies) + int(bool(args.jetson))} files written to {folder}: "
              + ", ".join(sorted([c.name for c in copies]
                                 + ([zip_path.name] if args.jetson else []))))
    return 0
