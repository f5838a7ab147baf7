"""Inference with an exported model through onnxruntime, reading everything from its metadata.

Why a separate module: CVAT auto-annotation and pool scoring need predictions without torch
in the loop (and faster, see docs/BENCHMARKS.md). The file carries its class names and
preprocessing (see models/export.py), so this class needs only the path.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from data.preprocess import normalise_batch
from data.preprocess import IMAGENET_MEAN, IMAGENET_STD

from models.onnx_contract import EMBEDDING_NAME, META_PREPROCESS, META_SCHEMA, softmax

__all__ = ["OnnxClassifier", "softmax"]


class OnnxClassifier:
    """One onnxruntime CPU session on an exported model.

    ``threads`` sets intra-op threads (None: onnxruntime's default, all cores); inter-op is 1
    because the graph is a single chain.
    """

    def __init__(self, path: str | Path, threads: int | None = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no ONNX model at {self.path}")
        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = int(threads)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.path), options, providers=list(providers))
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        try:
            self.schema: dict[str, list[str]] = json.loads(self.metadata[META_SCHEMA])
            self.preprocess: dict = json.loads(self.metadata[META_PREPROCESS])
        except KeyError as exc:
            raise ValueError(f"{self.path} lacks {exc.args[0]} metadata; export it with "
                             "`python -m core export`") from exc
        self.image_size = int(self.preprocess["size"])
        if (not np.allclose(self.preprocess["mean"], IMAGENET_MEAN)
                or not np.allclose(self.preprocess["std"], IMAGENET_STD)
                or self.preprocess.get("channel_order", "RGB") != "RGB"):
            raise ValueError(f"{self.path} was exported with a preprocessing this version does not "
                             f"apply: {self.preprocess}")
        self.attributes = list(self.schema)
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        missing = [n for n in [*self.attributes, EMBEDDING_NAME] if n not in outputs]
        if missing:
            raise ValueError(f"{self.path} has no output(s) {missing}")
        self._outputs = [*self.attributes, EMBEDDING_NAME]
        dim = next(o.shape for o in self.session.get_outputs() if o.name == EMBEDDING_NAME)[-1]
        #: Feature size of the backbone (512 ResNet18, 1280 EfficientNet-Lite0).
        self.embedding_dim = int(dim) if isinstance(dim, int) else 512

    def run(self, batch: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Normalised float32 (N, 3, S, S) -> ({attribute: logits (N, K)}, embedding (N, D))."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        values = self.session.run(self._outputs, {self.input_name: batch})
        return dict(zip(self.attributes, values[:-1])), values[-1]

    def predict(self, images: np.ndarray, batch_size: int = 64,
                ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """uint8 RGB (N, H, W, 3) -> ({attribute: probabilities (N, K)}, embedding (N, D)).

        Images are resized and normalised by :func:`data.preprocess.normalise_batch`, the one
        preprocessing shared with training.
        """
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        probs: dict[str, list[np.ndarray]] = {a: [] for a in self.attributes}
        embs: list[np.ndarray] = []
        for start in range(0, len(images), batch_size):
            logits, emb = self.run(normalise_batch(images[start:start + batch_size], self.image_size))
            for a in self.attributes:
                probs[a].append(softmax(logits[a]))
            embs.append(emb)
        if not embs:
            return ({a: np.zeros((0, len(self.schema[a])), np.float32) for a in self.attributes},
                    np.zeros((0, self.embedding_dim), np.float32))
        return {a: np.concatenate(p) for a, p in probs.items()}, np.concatenate(embs)

    def labels(self, probs: dict[str, np.ndarray]) -> list[dict[str, tuple[str, float]]]:
        """Per image {attribute: (class name, probability)} from :meth:`predict` output."""
        n = len(next(iter(probs.values()))) if probs else 0
        out: list[dict[str, tuple[str, float]]] = [{} for _ in range(n)]
        for a, p in probs.items():
            idx = p.argmax(1)
            for i, k in enumerate(idx):
                out[i][a] = (self.schema[a][int(k)], float(p[i, k]))
        return out
