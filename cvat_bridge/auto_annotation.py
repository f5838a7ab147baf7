"""A cvat-sdk auto-annotation function: one ``vehicle`` tag per image from our ONNX model.

The route that works against CVAT 2.2x and current servers is this app's own command, which
runs ``cvat_sdk.auto_annotation.annotate_task`` on the bridge's connection (version check
relaxed for 2.2x, tokens in the scheme the server takes)::

    python -m core cvat prefill --task 42 --model /path/to/model.onnx [--threshold 0.6]

``cvat-cli task auto-annotate --function-module cvat_bridge.auto_annotation`` is *not* the
documented route any more: cvat-cli 2.80 fails on a 2.23 server's about page, cvat-cli 2.23
lacks ``select_attribute_spec``, and the console script cannot import this package without
``PYTHONPATH`` (issue 12, defect 5). The module still works as a function module for
cvat-cli versions that match the server (``PYTHONPATH=<repo> cvat-cli ... -p
model_path=str:PATH``).

Tags are stored with ``source: auto``; ``cvat pull`` does not take them as labels until a
person reviewed them (see cvat_bridge/pull.py).

The model is an export from models/export.py: input ``image`` (N x 3 x S x S, normalised), one
logits output per attribute, ``embedding``, and metadata ``cargroup.schema`` (class names) and
``cargroup.preprocess``; :class:`models.onnx_runtime.OnnxClassifier` reads all of it, so the tag's
attribute values are the model's own class names. The spec's label is matched by name
(``vehicle``) and its select attributes by name to the task's labels.

CVAT tags carry no score, so uncertainty stays in our store (``score`` / ``cvat push
--prefill``). With ``--conf-threshold T`` an attribute whose probability is below T is left out
of the tag (the annotator sets it).
"""
from __future__ import annotations

import json
import os
import threading
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import PIL.Image
import cvat_sdk.auto_annotation as cvataa
import onnx
from cvat_sdk import models

from cvat_bridge.client import CvatError, translate_errors
from cvat_bridge.progress import ProgressFn, StageProgress
from data.schema import DEFAULT_SCHEMA
from models.onnx_contract import META_SCHEMA
from models.onnx_runtime import OnnxClassifier

ENV_MODEL = "CARGROUP_ONNX_MODEL"
ENV_THREADS = "CARGROUP_ONNX_THREADS"
TAG_LABEL = "vehicle"
LABEL_ID = 0


def build_spec(classes: dict[str, Sequence[str]]) -> cvataa.DetectionFunctionSpec:
    """The spec: tag label ``vehicle`` (id 0) with one select attribute per head (ids 0..)."""
    return cvataa.DetectionFunctionSpec(labels=[
        cvataa.label_spec(TAG_LABEL, LABEL_ID, type="tag", attributes=[
            cvataa.select_attribute_spec(attr, i, list(values))
            for i, (attr, values) in enumerate(classes.items())
        ]),
    ])


def _schema_from_model(path: Path) -> dict[str, list[str]]:
    """Class names from the model's metadata without building a full inference session."""
    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    if META_SCHEMA not in meta:
        raise ValueError(f"{path} has no {META_SCHEMA} metadata; export it with models/export.py")
    return json.loads(meta[META_SCHEMA])


class VehicleTagger:
    """The detection function object (``spec`` + ``detect``) around one ONNX model."""

    def __init__(self, model_path: str | Path | None = None, threads: int | None = None) -> None:
        path = model_path or os.environ.get(ENV_MODEL)
        self.model_path = Path(path).expanduser() if path else None
        self.threads = threads or (int(os.environ[ENV_THREADS]) if os.environ.get(ENV_THREADS)
                                   else None)
        self._lock = threading.Lock()

    @cached_property
    def classes(self) -> dict[str, list[str]]:
        if self.model_path is None:
            return {a: list(c) for a, c in DEFAULT_SCHEMA.classes.items()}
        return _schema_from_model(self.model_path)

    @cached_property
    def spec(self) -> cvataa.DetectionFunctionSpec:
        return build_spec(self.classes)

    @cached_property
    def classifier(self) -> Any:
        if self.model_path is None:
            raise cvataa.BadFunctionError(
                f"no model: set {ENV_MODEL} to an exported .onnx file or pass -p model_path=str:PATH")
        return OnnxClassifier(self.model_path, threads=self.threads)

    def predict(self, image: PIL.Image.Image) -> dict[str, tuple[str, float]]:
        """{attribute: (class, probability)} for one image."""
        arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
        with self._lock:
            probs, _ = self.classifier.predict(arr[None])
            return self.classifier.labels(probs)[0]

    def detect(self, context: cvataa.DetectionFunctionContext,
               image: PIL.Image.Image) -> list[models.LabeledImageRequest]:
        """One tag per image; attributes below ``context.conf_threshold`` are left out."""
        pred = self.predict(image)
        threshold = context.conf_threshold
        spec_ids = {name: i for i, name in enumerate(self.classes)}
        attrs = [models.AttributeValRequest(spec_id=spec_ids[a], value=value)
                 for a, (value, prob) in pred.items()
                 if a in spec_ids and (threshold is None or prob >= threshold)]
        if not attrs:
            return []
        return [cvataa.tag(LABEL_ID, attributes=attrs)]


def create(model_path: str | None = None, threads: int | None = None) -> VehicleTagger:
    """Factory for ``cvat-cli ... -p model_path=str:PATH`` (cvat-sdk calls it with the params)."""
    return VehicleTagger(model_path, threads)


_default: VehicleTagger | None = None


def _function() -> VehicleTagger:
    global _default
    if _default is None:
        _default = VehicleTagger()
    return _default


def __getattr__(name: str) -> Any:
    # Module-level `spec` is computed on first access so importing this module stays cheap and
    # picks up CARGROUP_ONNX_MODEL at use time (PEP 562).
    if name == "spec":
        return _function().spec
    raise AttributeError(name)


def detect(context: cvataa.DetectionFunctionContext,
           image: PIL.Image.Image) -> list[models.LabeledImageRequest]:
    """Module-level entry point used by ``--function-module cvat_bridge.auto_annotation``."""
    return _function().detect(context, image)


def prefill_task(conn: Any, task_id: int, *, model_path: str | Path | None = None,
                 conf_threshold: float | None = None, clear_existing: bool = False,
                 progress: ProgressFn | None = None) -> int:
    """Run cvat-sdk's ``annotate_task`` with our model on an open bridge connection.

    Returns the number of tags the task holds afterwards. ``conf_threshold`` leaves unsure
    attributes out of a tag (CVAT then reports them as the spec's empty default).
    """
    tagger = VehicleTagger(model_path)
    if tagger.model_path is None:
        raise CvatError(f"prefill needs a model: pass --model PATH (an .onnx from `python -m "
                        f"core export`) or set {ENV_MODEL}")
    if not tagger.model_path.is_file():
        raise CvatError(f"model file {tagger.model_path} does not exist")
    with translate_errors(conn.host, f"pre-label task {task_id}"):
        try:
            cvataa.annotate_task(conn.client, task_id, tagger, clear_existing=clear_existing,
                                 conf_threshold=conf_threshold,
                                 pbar=StageProgress(progress, 0.05, 0.95,
                                                    f"pre-labelling task {task_id}"))
        except cvataa.BadFunctionError as exc:
            raise CvatError(f"pre-label task {task_id}: {exc}") from None
        return len(conn.client.tasks.retrieve(task_id).get_annotations().tags)
