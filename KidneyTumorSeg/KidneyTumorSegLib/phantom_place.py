"""Scan geometry and patient placement for the phantom generator.

Chooses the grid (array shape ``(k, j, i)``, spacing ``(x, y, z)`` mm) when
the caller leaves it open, fits the body to the field of view, puts the
spine and the L1/L2 level (``zr``) in world coordinates (LPS mm), or builds
the body around the kidneys of a reference label, and measures the painted
lesions.
"""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from .phantom_body import body_profile, wall_depth
from .phantom_field import Grid
from .phantom_params import T, cyst_code, tumor_code
from .volume import InputError

_THICKNESS = (0.5, 0.625, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
_THICKNESS_P = (0.08, 0.07, 0.05, 0.1, 0.05, 0.05, 0.1, 0.1, 0.25, 0.15)
MAX_DEFAULT_SLICES = 400


def scan_geometry(rng, shape, spacing):
    """Array shape (k, j, i) and spacing (x, y, z) mm, random where not given."""
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(f"shape must be three positive integers (slices, rows, columns), got {shape!r}")
    if spacing is not None:
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise InputError(f"spacing must be three positive numbers (x, y, z) in mm, got {spacing!r}")
    fov = float(rng.uniform(307, 460))
    sz = float(rng.choice(_THICKNESS, p=_THICKNESS_P))
    cover = float(rng.uniform(200, 400))
    if spacing is None:
        if shape is None:
            sx = fov / 512
        else:
            sx = float(rng.uniform(330, 450)) / shape[2]
            sz = float(np.clip(cover / shape[0], 0.5, 5.0))
        spacing = (sx, sx, sz)
    if shape is None:
        nxy = 512 if spacing[0] * 512 <= 500 else int(round(fov / spacing[0]))
        shape = (int(min(round(cover / spacing[2]), MAX_DEFAULT_SLICES)), nxy, nxy)
    return shape, spacing


def axes(origin, sp, shape):
    nz, ny, nx = shape
    return (origin[0] + np.arange(nx) * sp[0], origin[1] + np.arange(ny) * sp[1], origin[2] + np.arange(nz) * sp[2])


def _fit_body(A, fovx: float, fovy: float) -> None:
    A["a"] = min(A["a"], max(0.55 * fovx, 125.0))
    depth = A["b"] * (A["b_ant"] + A["b_post"])
    if depth > 0.9 * fovy:
        A["b"] *= 0.9 * fovy / depth
    A["d_back"] = max(A["d_back"], A["vb_rx"] * A["vb_ry_f"] + 2 * A["canal"] + 33)


def _spine_y(A) -> float:
    _, _, bp = body_profile(A, 0.0)
    fat_post = A["fat"] * max(1 - A["fat_c2"] + A["fat_s1"], 0.3)
    return A["cy"] + bp - A["skin"] - fat_post - A["d_back"]


def place_synthetic(A, rng, shape, sp):
    """Put the patient in the field of view; returns the grid origin (x, y, z)."""
    nz, ny, nx = shape
    _fit_body(A, nx * sp[0], ny * sp[1])
    A["cx"] = float(rng.uniform(-15, 15))
    A["cy"] = float(rng.uniform(-20, 5)) + A["b"] * (A["b_ant"] - A["b_post"]) / 2
    A["y_vb"] = _spine_y(A)
    cover = nz * sp[2]
    up = min(float(rng.uniform(110, 200)), max(cover - 100, 0.5 * cover))
    A["zr"] = float(rng.uniform(-200, 0))
    origin = (-(nx - 1) / 2 * sp[0] + float(rng.uniform(-5, 5)), -(ny - 1) / 2 * sp[1] + float(rng.uniform(-5, 5)),
              A["zr"] + up - (nz - 1) * sp[2])
    return origin


def place_from_label(A, rng, comps: List[Dict[str, Any]], grid: Grid) -> List[str]:
    """Build the body around the reference kidneys; returns the kidney sides present."""
    fovx, fovy = grid.x[-1] - grid.x[0], grid.y[-1] - grid.y[0]
    _fit_body(A, fovx, fovy)
    if not comps:
        A["cx"] = float(0.5 * (grid.x[0] + grid.x[-1]))
        A["cy"] = float(0.5 * (grid.y[0] + grid.y[-1]))
        A["y_vb"] = _spine_y(A)
        A["zr"] = float(0.5 * (grid.z[0] + grid.z[-1]))
        return []
    cs = np.array([c["centre_xyz"] for c in comps])
    w = np.array([c["voxels"] for c in comps], float)
    if cs[:, 0].max() - cs[:, 0].min() > 60:
        cx = 0.5 * (cs[:, 0].max() + cs[:, 0].min())
        sides = ["right", "left"]
    else:
        kx = float(np.average(cs[:, 0], weights=w))
        right = kx < 0.5 * (grid.x[0] + grid.x[-1])
        cx = kx + (70.0 if right else -70.0)
        sides = ["right"] if right else ["left"]
    A["cx"] = float(cx)
    A["zr"] = float(np.average(cs[:, 2], weights=w) + rng.uniform(0, 10))
    y_vb = float(np.average(cs[:, 1], weights=w) - rng.uniform(0, 10))
    half = max(abs(c["centre_xyz"][0] - cx) + 0.5 * c["extent_mm"][0] for c in comps)
    A["a"] = max(A["a"], half + 25 + wall_depth(A, 0.0))
    A["cy"] = 0.0
    A["cy"] = y_vb - _spine_y(A)
    A["y_vb"] = y_vb
    for s in sides:
        A[f"{s}_x"] = abs(float(cs[:, 0][np.argmin(cs[:, 0]) if s == "right" else np.argmax(cs[:, 0])]) - cx)
    return sides


def measure(tissue: np.ndarray, grid: Grid, sub: int, sp, tumors, cysts) -> None:
    """Add realised voxel counts, volumes and extents of the painted lesions (output grid)."""
    idx = np.nonzero(tissue >= T.CYST0)
    if len(idx[0]) == 0:
        for les in tumors + cysts:
            les.update({"voxels": 0, "volume_ml": 0.0, "extent_mm": [0.0, 0.0, 0.0]})
        return
    codes = tissue[idx]
    z = grid.z[sub // 2::sub] if sub > 1 else grid.z
    xyz = np.stack([grid.x[idx[2]], grid.y[idx[1]], z[idx[0]]], axis=1)
    vox_ml = float(np.prod(sp)) / 1000.0
    groups = [(les, (codes >= tumor_code(i, 0)) & (codes <= tumor_code(i, T.TUMOR_STRIDE - 1))) for i, les in enumerate(tumors)]
    groups += [(les, codes == cyst_code(i)) for i, les in enumerate(cysts)]
    for les, m in groups:
        n = int(m.sum())
        ext = (xyz[m].max(0) - xyz[m].min(0) + np.asarray(sp)) if n else np.zeros(3)
        les.update({"voxels": n, "volume_ml": n * vox_ml, "extent_mm": [float(v) for v in ext]})
