"""The ONNX contract, defined once: tensor names, ``metadata_props`` keys and softmax.

Why one module: the exporter writes these names, and onnxruntime inference, int8 quantization,
the Jetson bundle and CVAT auto-annotation read them. A key spelled twice drifts; here a rename
changes every reader at once. ``softmax`` is the Jetson device scripts' own (they ship without
the project), re-exported so the project has exactly one definition.
"""
from __future__ import annotations

from models.jetson.common import softmax

INPUT_NAME = "image"
EMBEDDING_NAME = "embedding"
META_SCHEMA = "cargroup.schema"
META_PREPROCESS = "cargroup.preprocess"
META_MODEL_ID = "cargroup.model_id"
META_CREATED = "cargroup.created_at"
META_EXPORTER = "cargroup.exporter"
META_OUTPUTS = "cargroup.outputs"
META_PARITY = "cargroup.parity"
META_PRECISION = "cargroup.precision"
META_QUANTIZATION = "cargroup.quantization"
META_BACKBONE = "cargroup.backbone"            # backbone name, e.g. resnet18, efficientnet_lite0
META_WEIGHTS_ORIGIN = "cargroup.weights_origin"  # JSON {backbone, kind, detail}: starting weights

__all__ = ["INPUT_NAME", "EMBEDDING_NAME", "META_SCHEMA", "META_PREPROCESS", "META_MODEL_ID",
           "META_CREATED", "META_EXPORTER", "META_OUTPUTS", "META_PARITY", "META_PRECISION",
           "META_QUANTIZATION", "META_BACKBONE", "META_WEIGHTS_ORIGIN", "softmax"]
