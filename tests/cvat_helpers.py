"""Shared pieces for the CVAT tests: a small pool of real JPEG files and fast settings."""
from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cvat_bridge.settings import CvatSettings  # noqa: E402
from cvat_server import CvatTestServer  # noqa: E402,F401

PASSWORD = "admin-password"


def fast_settings(url: str, **overrides: object) -> CvatSettings:
    """Small timeouts/backoff so fault tests stay fast (1-2 s at most)."""
    kw: dict = dict(host=url, username="admin", password=PASSWORD, timeout_s=1.0, retries=2,
                    backoff_s=0.02, status_check_period_s=0.02, operation_timeout_s=1.0)
    kw.update(overrides)
    return CvatSettings(**kw)


def add_pool(ws, n: int, *, seed: int = 0, folders: int = 1) -> list[int]:
    """Write ``n`` small JPEGs (same base names in different folders when folders > 1)."""
    rng = np.random.default_rng(seed)
    ids = []
    with ws.store() as store:
        for i in range(n):
            folder = f"cam{i % folders}"
            rel = f"pools/test/{folder}/img_{i // folders:03d}.jpg"
            path = ws.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            arr = rng.integers(0, 255, (24 + i % 5, 32, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, "JPEG", quality=80)
            data = buf.getvalue()
            path.write_bytes(data)
            image_id, _ = store.add_image(
                path=rel, name=f"{folder}/img_{i // folders:03d}.jpg",
                sha256=hashlib.sha256(data).hexdigest(), width=32, height=arr.shape[0],
                nbytes=len(data), split="train")
            ids.append(image_id)
    return ids
