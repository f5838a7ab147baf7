"""Model-input preprocessing shared by training, scoring, evaluation and every export.

One function turns cached uint8 images into the network's input so PyTorch, ONNX Runtime and
the Jetson runner see identical tensors. The constants are also written into exported model
metadata (see models/export.py).
"""
from __future__ import annotations

import cv2
import numpy as np

#: ImageNet channel statistics (RGB, 0..1 scale) that every pretrained backbone here expects.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32) * 255.0
_STD = np.asarray(IMAGENET_STD, dtype=np.float32) * 255.0


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an HxWx3 uint8 image to size x size (area filter down, linear up)."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def normalise_batch(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB -> float32 (N, 3, size, size), ImageNet-normalised."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) RGB images, got shape {images.shape}")
    if images.shape[1:3] != (size, size):
        images = np.stack([resize_square(img, size) for img in images]) if len(images) else \
            np.zeros((0, size, size, 3), np.uint8)
    out = (images.astype(np.float32) - _MEAN) / _STD
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))
