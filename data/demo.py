"""Synthetic vehicle crops with full ground truth: the demo pool and the test/benchmark data.

Why synthetic: the app must be usable (and its active-learning loop testable) with no images
and no annotators. Each image is a small 3-D render, so the three attributes show up the way
they do in real crops:

* **type** is a body: a side profile (hood, cabin, trunk, bed, box...) extruded to the vehicle's
  width, with wheels, glass and lights, so every type has its own silhouette from every angle;
* **color** is the paint of that body, shaded by a random light;
* **orientation** is the camera's azimuth around the body (eight 45-degree bins, jittered).
  The body is left-right symmetric and a "right" camera sits at the mirrored azimuth of a
  "left" one, so a horizontally flipped "left" image *is* a "right" image (the schema flip map).

Pixels come from a tiny z-buffered polygon rasteriser (PIL masks + numpy) at twice the output
size, box-filtered down, composited on a random road/wall/noise background with a ground
shadow, then lighting, blur, sensor noise and JPEG compression. Images are a pure function of
(seed, index, size, frequencies), so a demo pool is reproducible.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from data.ingest import ingest
from data.progress import Progress, ProgressFn, scaled
from data.schema import DEFAULT_CLASSES

# -- classes and default (street-like, imbalanced) frequencies ---------------------------------
PAINT: dict[str, tuple[int, int, int]] = {
    "red": (185, 28, 32), "green": (34, 118, 52), "yellow": (228, 196, 36),
    "orange": (232, 118, 24), "blue": (32, 72, 168), "purple": (108, 44, 140),
    "black": (26, 26, 29), "white": (232, 232, 230), "brown": (108, 68, 40),
    "gray": (128, 130, 134),
}

DEFAULT_FREQUENCIES: dict[str, dict[str, float]] = {
    "color": {"black": 0.22, "white": 0.22, "gray": 0.22, "blue": 0.09, "red": 0.09,
              "brown": 0.05, "green": 0.04, "yellow": 0.03, "orange": 0.02, "purple": 0.02},
    "type": {"sedan": 0.31, "suv": 0.25, "hatchback": 0.13, "pickup": 0.09, "minivan": 0.08,
             "van": 0.06, "truck": 0.045, "bus": 0.035},
    "orientation": {"back": 0.20, "front": 0.16, "back-left": 0.12, "back-right": 0.12,
                    "front-left": 0.12, "front-right": 0.12, "left": 0.08, "right": 0.08},
}

# Camera azimuth (degrees) per orientation: 0 = camera in front of the vehicle, 90 = on its
# left side (the vehicle then points image-left), 270 = on its right side.
AZIMUTH: dict[str, float] = {
    "front": 0.0, "front-left": 45.0, "left": 90.0, "back-left": 135.0,
    "back": 180.0, "back-right": 225.0, "right": 270.0, "front-right": 315.0,
}

_MATERIAL: dict[str, tuple[int, int, int]] = {
    "glass": (38, 48, 60), "under": (18, 18, 20), "bed": (44, 44, 46), "tire": (24, 24, 26),
    "hub": (150, 152, 158), "grille": (34, 34, 38), "plate": (212, 212, 204),
    "head": (248, 246, 228), "tail": (196, 22, 28), "trim": (30, 30, 32),
}


@dataclass(frozen=True)
class BodySpec:
    """A vehicle type: side profile over normalised length (0 = rear, 1 = front), metres up.

    ``profile`` is counter-clockwise; the material tag of a point applies to the edge that
    starts there. ``windows`` = (front-bottom x, front-top x, rear-top x, rear-bottom x,
    bottom z, top z, pillar xs). ``head``/``tail``/``grille`` are z ranges on the end faces.
    """

    length: float
    width: float
    wheel_r: float
    axles: tuple[float, ...]
    profile: tuple[tuple[float, float, str], ...]
    windows: tuple[float, float, float, float, float, float, tuple[float, ...]]
    head: tuple[float, float]
    tail: tuple[float, float]
    grille: tuple[float, float]
    head_w: float = 0.22     # fraction of width per headlight
    tail_w: float = 0.20


BODIES: dict[str, BodySpec] = {
    "sedan": BodySpec(4.7, 1.80, 0.31, (0.18, 0.80), (
        (0, .30, "under"), (1, .30, "paint"), (1, .70, "paint"), (.97, .84, "paint"),
        (.72, .95, "glass"), (.58, 1.42, "paint"), (.34, 1.43, "glass"), (.20, 1.00, "paint"),
        (.03, .98, "paint"), (0, .86, "paint")),
        (.70, .585, .35, .225, 1.0, 1.37, (.46,)), (.56, .68), (.72, .84), (.40, .55)),
    "hatchback": BodySpec(4.1, 1.75, 0.30, (0.17, 0.82), (
        (0, .30, "under"), (1, .30, "paint"), (1, .68, "paint"), (.96, .82, "paint"),
        (.72, .92, "glass"), (.56, 1.45, "paint"), (.08, 1.45, "glass"), (.01, 1.0, "paint"),
        (0, .86, "paint")),
        (.70, .57, .12, .06, .97, 1.39, (.44, .18)), (.54, .66), (.70, .84), (.38, .52)),
    "suv": BodySpec(4.7, 1.90, 0.38, (0.18, 0.81), (
        (0, .42, "under"), (1, .42, "paint"), (1, .86, "paint"), (.97, 1.0, "paint"),
        (.76, 1.08, "glass"), (.62, 1.72, "paint"), (.04, 1.74, "glass"), (0, 1.18, "paint")),
        (.74, .63, .07, .05, 1.13, 1.66, (.47, .24)), (.70, .84), (.95, 1.12), (.50, .68)),
    "minivan": BodySpec(5.0, 1.95, 0.33, (0.16, 0.80), (
        (0, .33, "under"), (1, .33, "paint"), (1, .74, "paint"), (.965, .90, "paint"),
        (.86, .99, "glass"), (.66, 1.76, "paint"), (.03, 1.77, "glass"), (0, 1.20, "paint")),
        (.84, .675, .06, .04, 1.06, 1.70, (.58, .31)), (.60, .72), (.95, 1.12), (.42, .58)),
    "van": BodySpec(5.6, 2.00, 0.36, (0.17, 0.80), (
        (0, .38, "under"), (1, .38, "paint"), (1, .86, "paint"), (.955, 1.06, "paint"),
        (.895, 1.18, "glass"), (.80, 2.36, "paint"), (.005, 2.40, "paint"), (0, 2.35, "paint")),
        (.885, .81, .70, .70, 1.26, 2.05, ()), (.70, .84), (.55, 1.10), (.48, .66),
        tail_w=0.09),
    "pickup": BodySpec(5.4, 2.00, 0.40, (0.17, 0.80), (
        (0, .46, "under"), (1, .46, "paint"), (1, .96, "paint"), (.97, 1.10, "paint"),
        (.78, 1.18, "glass"), (.62, 1.86, "paint"), (.43, 1.86, "glass"), (.425, 1.40, "paint"),
        (.42, 1.26, "bed"), (0, 1.26, "paint")),
        (.76, .63, .45, .45, 1.23, 1.79, (.54,)), (.80, .94), (.85, 1.20), (.55, .80),
        tail_w=0.09),
    "truck": BodySpec(7.5, 2.45, 0.50, (0.14, 0.27, 0.84), (
        (0, .60, "under"), (1, .60, "paint"), (1, 1.45, "glass"), (.985, 2.45, "paint"),
        (.96, 2.62, "paint"), (.76, 2.62, "paint"), (.755, 3.35, "paint"), (0, 3.35, "paint")),
        (.975, .97, .82, .82, 1.75, 2.40, ()), (.85, 1.05), (.75, .95), (1.10, 1.40),
        head_w=0.16, tail_w=0.12),
    "bus": BodySpec(11.0, 2.50, 0.50, (0.22, 0.82), (
        (0, .35, "under"), (1, .35, "paint"), (1, 1.15, "glass"), (1, 2.85, "paint"),
        (.985, 3.05, "paint"), (.015, 3.05, "paint"), (0, 2.85, "glass"), (0, 1.95, "paint")),
        (.955, .955, .04, .04, 1.55, 2.75, (.86, .76, .66, .56, .46, .36, .26, .16)),
        (.55, .80), (.60, 1.00), (.85, 1.05), head_w=0.14, tail_w=0.10),
}


# -- geometry ---------------------------------------------------------------------------------
@dataclass
class _Face:
    pts: np.ndarray               # (N, 3) world points, planar
    normal: np.ndarray            # (3,) outward unit normal
    color: tuple[int, int, int]
    material: str
    decal: bool = False           # drawn on top of the coplanar face beneath it


def _clip_x(poly: list[tuple[float, float]], x0: float, x1: float) -> list[tuple[float, float]]:
    """Sutherland-Hodgman clip of a 2-D polygon to x0 <= x <= x1."""
    def clip(points: list[tuple[float, float]], keep: Callable[[float], bool], xc: float):
        out = []
        for i, p in enumerate(points):
            q = points[i - 1]
            if keep(p[0]):
                if not keep(q[0]):
                    t = (xc - q[0]) / (p[0] - q[0])
                    out.append((xc, q[1] + t * (p[1] - q[1])))
                out.append(p)
            elif keep(q[0]):
                t = (xc - q[0]) / (p[0] - q[0])
                out.append((xc, q[1] + t * (p[1] - q[1])))
        return out
    return clip(clip(poly, lambda x: x >= x0, x0), lambda x: x <= x1, x1)


def _body_faces(spec: BodySpec, paint: tuple[int, int, int]) -> list[_Face]:
    L, W = spec.length, spec.width
    hw = W / 2
    prof = [((x - 0.5) * L, z, m) for x, z, m in spec.profile]
    faces: list[_Face] = []
    xz = np.array([(x, z) for x, z, _ in prof])
    for sign in (1.0, -1.0):
        pts = np.column_stack([xz[:, 0], np.full(len(xz), sign * hw), xz[:, 1]])
        faces.append(_Face(pts, np.array([0, sign, 0.0]), paint, "paint"))
    for i, (x, z, mat) in enumerate(prof):
        x2, z2, _ = prof[(i + 1) % len(prof)]
        dx, dz = x2 - x, z2 - z
        n = math.hypot(dx, dz)
        if n < 1e-9:
            continue
        normal = np.array([dz / n, 0.0, -dx / n])
        pts = np.array([[x, -hw, z], [x, hw, z], [x2, hw, z2], [x2, -hw, z2]])
        color = paint if mat == "paint" else _MATERIAL[mat]
        faces.append(_Face(pts, normal, color, mat))
    # side windows, split by pillars
    fb, ft, rt, rb, zb, zt, pillars = spec.windows
    trap = [((fb - .5) * L, zb), ((ft - .5) * L, zt), ((rt - .5) * L, zt), ((rb - .5) * L, zb)]
    cuts = sorted([(p - .5) * L for p in pillars])
    edges = [-L] + cuts + [L]
    gap = 0.05
    for a, b in zip(edges, edges[1:]):
        piece = _clip_x(trap, a + gap, b - gap)
        if len(piece) >= 3:
            for sign in (1.0, -1.0):
                pts = np.array([[x, sign * hw, z] for x, z in piece])
                faces.append(_Face(pts, np.array([0, sign, 0.0]), _MATERIAL["glass"], "glass",
                                   decal=True))
    # lights, grille, plates on the end faces; light wraps on the sides
    xf, xr = L / 2, -L / 2

    def end_rect(x: float, y0: float, y1: float, z0: float, z1: float, mat: str,
                 nx: float) -> _Face:
        pts = np.array([[x, y0, z0], [x, y1, z0], [x, y1, z1], [x, y0, z1]])
        return _Face(pts, np.array([nx, 0, 0.0]), _MATERIAL[mat], mat, decal=True)

    inset = 0.06 * W
    for sign in (1.0, -1.0):
        y_out, y_in = sign * (hw - inset), sign * (hw - inset - spec.head_w * W)
        faces.append(end_rect(xf, y_in, y_out, *spec.head, "head", 1.0))
        y_in_t = sign * (hw - inset - spec.tail_w * W)
        faces.append(end_rect(xr, y_in_t, y_out, *spec.tail, "tail", -1.0))
        # light wraps so pure side views still show which end is the front
        for x0, x1, (z0, z1), mat in ((xf - 0.05 * L, xf - 0.004 * L, spec.head, "head"),
                                      (xr + 0.004 * L, xr + 0.045 * L, spec.tail, "tail")):
            pts = np.array([[x0, sign * hw, z0], [x1, sign * hw, z0], [x1, sign * hw, z1],
                            [x0, sign * hw, z1]])
            faces.append(_Face(pts, np.array([0, sign, 0.0]), _MATERIAL[mat], mat, decal=True))
    g_half = hw - inset - spec.head_w * W - 0.05
    if g_half > 0.1:
        faces.append(end_rect(xf, -g_half, g_half, *spec.grille, "grille", 1.0))
    z_plate = spec.profile[0][1] + 0.08
    for x, nx in ((xf, 1.0), (xr, -1.0)):
        faces.append(end_rect(x, -0.26, 0.26, z_plate, z_plate + 0.12, "plate", nx))
    # wheels: 12-gon prisms on both sides, hub caps as decals
    k = 12
    ang = np.linspace(0, 2 * np.pi, k, endpoint=False) + np.pi / k
    tire_w = 0.22 + 0.02 * W
    for ax in spec.axles:
        cx, r = (ax - 0.5) * L, spec.wheel_r
        ring = np.column_stack([cx + r * np.cos(ang), r + r * np.sin(ang)])
        hub = np.column_stack([cx + 0.55 * r * np.cos(ang), r + 0.55 * r * np.sin(ang)])
        for sign in (1.0, -1.0):
            y_out, y_in = sign * (hw + 0.01), sign * (hw - tire_w)
            cap = np.column_stack([ring[:, 0], np.full(k, y_out), ring[:, 1]])
            faces.append(_Face(cap, np.array([0, sign, 0.0]), _MATERIAL["tire"], "tire"))
            hub_pts = np.column_stack([hub[:, 0], np.full(k, y_out), hub[:, 1]])
            faces.append(_Face(hub_pts, np.array([0, sign, 0.0]), _MATERIAL["hub"], "hub",
                               decal=True))
            for i in range(k):
                (x1, z1), (x2, z2) = ring[i], ring[(i + 1) % k]
                mid = np.array([(x1 + x2) / 2 - cx, 0, (z1 + z2) / 2 - r])
                pts = np.array([[x1, y_in, z1], [x1, y_out, z1], [x2, y_out, z2], [x2, y_in, z2]])
                faces.append(_Face(pts, mid / np.linalg.norm(mid), _MATERIAL["tire"], "tire"))
    return faces


def _camera(azimuth_deg: float, elevation_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(toward-camera c, image-right r, image-up u) unit vectors for an orthographic view."""
    b, a = math.radians(azimuth_deg), math.radians(elevation_deg)
    c = np.array([math.cos(a) * math.cos(b), math.cos(a) * math.sin(b), math.sin(a)])
    f = -c
    r = np.cross(f, [0.0, 0.0, 1.0])
    r /= np.linalg.norm(r)
    u = np.cross(r, f)
    return c, r, u


def _render_vehicle(faces: list[_Face], canvas: int, c: np.ndarray, r: np.ndarray, u: np.ndarray,
                    light: np.ndarray, ambient: float, diffuse: float, fill: float,
                    offset: tuple[float, float], spec_k: float
                    ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, float, float, float]]:
    """Z-buffered render; returns (rgb float canvas, alpha mask, projection params)."""
    allpts = np.concatenate([f.pts for f in faces])
    pu, pv = allpts @ r, allpts @ u
    span = max(pu.max() - pu.min(), pv.max() - pv.min())
    s = fill * canvas / span
    cx = canvas / 2 - s * (pu.max() + pu.min()) / 2 + offset[0] * canvas
    cy = canvas / 2 + s * (pv.max() + pv.min()) / 2 + offset[1] * canvas
    rgb = np.zeros((canvas, canvas, 3), np.float32)
    depth = np.full((canvas, canvas), -np.inf, np.float32)
    alpha = np.zeros((canvas, canvas), np.float32)
    half = light + c
    half /= np.linalg.norm(half)
    for f in faces:
        facing = float(f.normal @ c)
        if facing <= 0.02:
            continue
        X = cx + s * (f.pts @ r)
        Y = cy - s * (f.pts @ u)
        D = f.pts @ c
        x0, x1 = int(max(0, np.floor(X.min()))), int(min(canvas, np.ceil(X.max()) + 1))
        y0, y1 = int(max(0, np.floor(Y.min()))), int(min(canvas, np.ceil(Y.max()) + 1))
        if x1 <= x0 or y1 <= y0:
            continue
        mask_img = Image.new("L", (x1 - x0, y1 - y0), 0)
        ImageDraw.Draw(mask_img).polygon(list(zip(X - x0, Y - y0)), fill=255)
        mask = np.asarray(mask_img) > 0
        if not mask.any():
            continue
        A = np.column_stack([X, Y, np.ones_like(X)])
        coef, *_ = np.linalg.lstsq(A, D, rcond=None)
        gy, gx = np.mgrid[y0:y1, x0:x1]
        d = coef[0] * gx + coef[1] * gy + coef[2] + (0.02 if f.decal else 0.0)
        win = depth[y0:y1, x0:x1]
        draw = mask & (d > win)
        if not draw.any():
            continue
        lam = ambient + diffuse * max(0.0, float(f.normal @ light))
        shade = np.array(f.color, np.float32) * lam
        if f.material in ("paint", "glass", "hub"):
            shade = shade + spec_k * 255.0 * max(0.0, float(f.normal @ half)) ** 24
        if f.material == "head":
            shade = np.maximum(shade, np.array(f.color, np.float32) * 0.9)
        win[draw] = d[draw]
        rgb[y0:y1, x0:x1][draw] = shade
        alpha[y0:y1, x0:x1][draw] = 1.0
    return rgb, alpha, (np.array([cx, cy]), s, 0.0, 0.0)


# -- backgrounds ------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    small = rng.random((cells, cells)).astype(np.float32)
    img = Image.fromarray((small * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    return np.asarray(img, np.float32) / 255.0


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    """A background image (float RGB) and the horizon row fraction (for the shadow)."""
    kind = rng.choice(["road", "road", "wall", "noise"])
    yy = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    horizon = float(rng.uniform(0.25, 0.6))
    if kind == "road":
        sky_top = rng.uniform([90, 120, 160], [170, 190, 230])
        sky_low = rng.uniform([170, 180, 190], [230, 235, 240])
        ground = rng.uniform(60, 130) + rng.uniform(-8, 8, 3)
        t = np.clip(yy / max(horizon, 1e-3), 0, 1)
        sky = sky_top * (1 - t) + sky_low * t
        tex = _smooth_noise(rng, size, 16)[..., None] * 30 - 15
        road = np.broadcast_to(ground, (size, size, 3)) + tex
        bg = np.where(yy < horizon, sky, road)
        if rng.random() < 0.5:  # far-off buildings / trees band
            band = rng.uniform(40, 140, 3)
            h_band = horizon - rng.uniform(0.05, 0.2)
            bg = np.where((yy >= h_band) & (yy < horizon),
                          band + _smooth_noise(rng, size, 8)[..., None] * 50 - 25, bg)
    elif kind == "wall":
        base = rng.uniform(70, 200, 3) * rng.uniform(0.6, 1.0)
        bg = np.broadcast_to(base, (size, size, 3)) + _smooth_noise(rng, size, 6)[..., None] * 40 - 20
        ground = rng.uniform(60, 120)
        bg = np.where(yy < horizon + 0.25, bg, ground + _smooth_noise(rng, size, 12)[..., None] * 20)
        horizon = horizon + 0.25
    else:
        a, b = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
        n = _smooth_noise(rng, size, int(rng.integers(3, 10)))[..., None]
        bg = a * n + b * (1 - n)
    return np.ascontiguousarray(bg, dtype=np.float32), horizon


# -- sampling classes -------------------------------------------------------------------------
def _normalised_frequencies(frequencies: Mapping[str, Mapping[str, float]] | None
                            ) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for attr, classes in DEFAULT_CLASSES.items():
        given = (frequencies or {}).get(attr)
        weights = dict(given) if given is not None else dict(DEFAULT_FREQUENCIES[attr])
        unknown = set(weights) - set(classes)
        if unknown:
            raise ValueError(f"unknown {attr} classes in frequencies: {sorted(unknown)}")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"{attr} frequencies must be non-negative and not all zero")
        total = sum(weights.values())
        out[attr] = {c: weights.get(c, 0.0) / total for c in classes}
    return out


def _quota(n: int, probs: Mapping[str, float], rng: np.random.Generator) -> list[str]:
    """Exactly round(n * p) labels per class (largest remainder), shuffled."""
    names = list(probs)
    exact = np.array([probs[c] * n for c in names])
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts))[: n - counts.sum()]:
        counts[i] += 1
    labels = [c for c, k in zip(names, counts) for _ in range(k)]
    rng.shuffle(labels)
    return labels


def sample_labels(n: int, *, seed: int = 0,
                  frequencies: Mapping[str, Mapping[str, float]] | None = None
                  ) -> list[dict[str, str]]:
    """The ground truth of a demo pool: ``n`` labels with the requested class frequencies."""
    probs = _normalised_frequencies(frequencies)
    per_attr = {a: _quota(n, p, np.random.default_rng([seed, 7, i]))
                for i, (a, p) in enumerate(probs.items())}
    return [{a: per_attr[a][k] for a in probs} for k in range(n)]


# -- one image --------------------------------------------------------------------------------
def render_vehicle(label: Mapping[str, str], *, size: int = 96,
                   rng: np.random.Generator | None = None) -> np.ndarray:
    """One synthetic crop (size x size x 3 uint8 RGB) showing ``label``'s color/type/orientation."""
    rng = rng if rng is not None else np.random.default_rng()
    spec = BODIES[label["type"]]
    base = np.array(PAINT[label["color"]], np.float32)
    paint = tuple(int(v) for v in np.clip(base + rng.normal(0, 7, 3), 0, 255))
    faces = _body_faces(spec, paint)
    canvas = 2 * size
    jitter = 10.0 if label["orientation"] in ("front", "back") else 14.0
    az = AZIMUTH[label["orientation"]] + rng.uniform(-jitter, jitter)
    elev = rng.uniform(4.0, 22.0)
    c, r, u = _camera(az, elev)
    la, le = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 1.3)
    light = np.array([math.cos(le) * math.cos(la), math.cos(le) * math.sin(la), math.sin(le)])
    ambient, diffuse = rng.uniform(0.55, 0.7), rng.uniform(0.3, 0.45)
    fill = rng.uniform(0.78, 0.95)
    off = (rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04))
    rgb, alpha, (centre, s, _, _) = _render_vehicle(
        faces, canvas, c, r, u, light, ambient, diffuse, fill, off, rng.uniform(0.1, 0.35))
    # ground shadow: the footprint, projected and blurred
    L, W = spec.length, spec.width
    foot = np.array([[-L / 2 - .2, -W / 2 - .2, 0], [L / 2 + .2, -W / 2 - .2, 0],
                     [L / 2 + .2, W / 2 + .2, 0], [-L / 2 - .2, W / 2 + .2, 0]])
    fx, fy = centre[0] + s * (foot @ r), centre[1] - s * (foot @ u)
    shadow_img = Image.new("L", (canvas, canvas), 0)
    ImageDraw.Draw(shadow_img).polygon(list(zip(fx, fy)), fill=int(rng.uniform(90, 170)))
    shadow_img = shadow_img.filter(ImageFilter.GaussianBlur(canvas / 40))
    # down to output size (box filter = anti-aliasing)
    def down(a: np.ndarray) -> np.ndarray:
        return a.reshape(size, 2, size, 2, *a.shape[2:]).mean(axis=(1, 3))
    car, a = down(rgb), down(alpha)[..., None]
    shadow = down(np.asarray(shadow_img, np.float32) / 255.0)[..., None]
    bg, _ = _background(rng, size)
    out = bg * (1 - shadow) + car * a - bg * (1 - shadow) * a
    # global light level, colour cast, blur, sensor noise
    out = out * rng.uniform(0.82, 1.12) + rng.normal(0, 6, 3)
    img = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    if rng.random() < 0.4:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))
    arr = np.asarray(img, np.float32) + rng.normal(0, rng.uniform(0, 6), (size, size, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def render_reference(label: Mapping[str, str], *, size: int = 96, silhouette: bool = False,
                     elevation: float = 12.0) -> np.ndarray:
    """A clean, deterministic picture of ``label`` for the labelling guide (RGB uint8).

    The same body and camera as :func:`render_vehicle` at the class's exact azimuth, on a white
    background with fixed light and no noise, so the guide's pictures of "left", "front-left"
    ... follow the demo data's convention exactly. ``silhouette``: the outline only (black on
    white), which shows a type's shape without color or detail.
    """
    spec = BODIES[label.get("type", "sedan")]
    paint = PAINT[label.get("color", "gray")]
    canvas = 2 * size
    c, r, u = _camera(AZIMUTH[label.get("orientation", "front-left")], elevation)
    light = np.array([0.35, 0.55, 0.76])
    light /= np.linalg.norm(light)
    rgb, alpha, _ = _render_vehicle(_body_faces(spec, paint), canvas, c, r, u, light,
                                    0.62, 0.4, 0.86, (0.0, 0.0), 0.2)
    if silhouette:
        rgb = np.zeros_like(rgb)
    a = alpha.reshape(size, 2, size, 2).mean(axis=(1, 3))[..., None]
    car = rgb.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))
    out = car * a + 255.0 * (1 - a) if silhouette else car + 255.0 * (1 - a)
    return np.clip(out, 0, 255).astype(np.uint8)


# -- pools ------------------------------------------------------------------------------------
def demo_name(index: int) -> str:
    return f"demo_{index:05d}.jpg"


def generate_demo_images(out_dir: str | Path, n: int, *, seed: int = 0, size: int = 96,
                         frequencies: Mapping[str, Mapping[str, float]] | None = None,
                         progress: ProgressFn | None = None,
                         workers: int | None = None) -> dict[str, dict[str, str]]:
    """Write ``n`` JPEG crops into ``out_dir``; returns {relative path: full ground truth}.

    Image ``i`` depends only on (seed, i, size, frequencies): regenerating is reproducible,
    with or without worker processes (``workers``, default 2 for 100+ images).
    """
    if n <= 0:
        raise ValueError("the number of demo images must be positive")
    if size < 16:
        raise ValueError("demo images need at least 16 px")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = sample_labels(n, seed=seed, frequencies=frequencies)
    tasks = [(seed, i, size, label) for i, label in enumerate(labels)]
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    truth: dict[str, dict[str, str]] = {}
    pool = None
    if workers > 1 and n >= 100:
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        pool = mp.get_context(method).Pool(workers, initializer=_ignore_sigint)
        encoded = pool.imap(_encode_one, tasks, chunksize=8)
    else:
        encoded = map(_encode_one, tasks)
    try:
        for (_, i, _, label), data in zip(tasks, encoded):
            name = demo_name(i)
            tmp = out / f".{name}.tmp"
            tmp.write_bytes(data)
            tmp.replace(out / name)
            truth[name] = dict(label)
            if progress is not None:
                progress(Progress.counted(i + 1, n))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return truth


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _encode_one(task: tuple[int, int, int, Mapping[str, str]]) -> bytes:
    """Render image ``index`` of a pool and JPEG-encode it (runs in a worker process)."""
    seed, index, size, label = task
    rng = np.random.default_rng([seed, index, size])
    pixels = render_vehicle(label, size=size, rng=rng)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=int(rng.integers(80, 96)))
    return buf.getvalue()


MANIFEST = ".demo.json"


def create_demo_pool(ws: "Workspace", n: int, *, seed: int = 0, size: int = 96,  # noqa: F821
                     frequencies: Mapping[str, Mapping[str, float]] | None = None,
                     progress: ProgressFn | None = None) -> "IngestReport":  # noqa: F821
    """Generate a demo pool into ``ws.pools_dir/demo-<seed>`` and ingest it with ground truth.

    The folder keeps a manifest of its parameters: asking again for the same pool reuses the
    images (and ingestion then adds nothing); different parameters get their own folder.
    ``progress`` gets ``Progress`` over two stages, ``generating`` (first half, skipped when the
    images exist) then ``ingesting``; each counts the pool's ``n`` images, so a 600-image pool
    shows 600/600 twice, never 1200.
    """
    params = {"n": n, "seed": seed, "size": size,
              "frequencies": _normalised_frequencies(frequencies)}
    folder = ws.pools_dir / f"demo-{seed}"
    manifest = folder / MANIFEST
    if folder.exists() and manifest.is_file():
        stored = json.loads(manifest.read_text(encoding="utf-8"))
        if stored.get("params") != params:
            tag = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
            folder = ws.pools_dir / f"demo-{seed}-n{n}-s{size}-{tag}"
            manifest = folder / MANIFEST
    generated = not manifest.is_file()
    if not generated:
        truth = json.loads(manifest.read_text(encoding="utf-8"))["truth"]
    else:
        if not ws.exists:
            ws.init()
        gen_progress = scaled(progress, 0.0, 0.5, "generating")
        truth = generate_demo_images(folder, n, seed=seed, size=size, frequencies=frequencies,
                                     progress=gen_progress)
        tmp = folder / ".demo.json.tmp"
        tmp.write_text(json.dumps({"params": params, "truth": truth}), encoding="utf-8")
        tmp.replace(manifest)
    ing_progress = scaled(progress, 0.5 if generated else 0.0, 1.0, "ingesting")
    return ingest(ws, folder, ground_truth=truth, progress=ing_progress)


def class_counts(truth: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, int]]:
    """{attribute: {class: count}} of a ground-truth mapping (for reports and tests)."""
    out: dict[str, dict[str, int]] = {}
    for values in truth.values():
        for attr, value in values.items():
            out.setdefault(attr, {}).setdefault(value, 0)
            out[attr][value] += 1
    return out


__all__: Sequence[str] = (
    "BODIES", "DEFAULT_FREQUENCIES", "PAINT", "AZIMUTH", "class_counts", "create_demo_pool",
    "generate_demo_images", "render_reference", "render_vehicle", "sample_labels",
)
