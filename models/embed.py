"""Feature vectors for a batch of cached images from any backbone (used by selection and refits)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from data.preprocess import normalise_batch


@torch.inference_mode()
def embed_images(module: nn.Module, images: np.ndarray, image_size: int, *,
                 batch_size: int = 128, device: torch.device | str = "cpu") -> np.ndarray:
    """uint8 ``(N, H, W, 3)`` RGB -> float32 ``(N, D)`` features from ``module`` in eval mode."""
    module.eval().to(device)
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(normalise_batch(images[start:start + batch_size], image_size))
        out.append(module(x.to(device)).float().cpu().numpy())
    if not out:
        with torch.no_grad():
            probe = module(torch.zeros(1, 3, image_size, image_size, device=device))
        return np.zeros((0, probe.shape[1]), np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)
