"""Scan geometry and patient placement for the phantom generator.

Chooses the grid (array shape ``(k, j, i)``, spacing ``(x, y, z)`` mm) when
the caller leaves it open, fits the body to the field of view, puts the
spine and the L1/L2 level (``zr``) in world coordinates (LPS mm), or builds
the body around the kidneys of a reference label (:func:`set_up_scan` does
either and returns the painted grid), and measures the painted lesions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..geometry.records import Reorient, canonical_reorient
from .phantom_body import body_profile, wall_depth
from .phantom_field import Grid
from .phantom_kits import find_kidneys
from .phantom_params import T, cyst_code, tumor_code
from ..geometry.volume import InputError, Volume

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


@dataclass
class Scan:
    """The grid of one phantom, from :func:`set_up_scan`.

    ``shape`` (k, j, i), ``spacing`` (x, y, z) mm and ``origin`` describe
    the output grid in canonical order; ``grid`` is the painted one, with
    ``sub`` sub-slices per output slice. ``sides`` are the kidneys present.
    With a reference label: ``reorient`` brings it to canonical order,
    ``label`` is its canonical array and ``comps`` its kidneys
    (:func:`~.phantom_kits.find_kidneys` on the output grid).
    """

    shape: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    sub: int
    sides: List[str]
    grid: Optional[Grid] = None
    reorient: Optional[Reorient] = None
    label: Optional[np.ndarray] = None
    comps: List[Dict[str, Any]] = field(default_factory=list)


def set_up_scan(A: Dict[str, float], rng: np.random.Generator, shape: Optional[Sequence[int]],
                spacing: Optional[Sequence[float]], z_supersample: Optional[int], kits_label: Optional[Volume],
                sides: str) -> Scan:
    """Grid, patient placement (fills ``A``'s position keys) and kidney sides of one phantom.

    ``sides`` ("both", "left", "right" or "none") picks the synthetic kidneys;
    with ``kits_label`` its grid and kidneys decide instead.
    """
    if kits_label is None:
        shape_c, sp = scan_geometry(rng, shape, spacing)
        sub = check_sub(z_supersample, sp[2])
        origin = place_synthetic(A, rng, shape_c, sp)
        scan = Scan(shape_c, sp, origin, sub, [s for s in ("right", "left") if sides in ("both", s)])
    else:
        scan = _scan_from_label(A, rng, shape, spacing, z_supersample, kits_label)
    if len(scan.sides) == 1:  # a solitary kidney grows
        for k in ("L", "W", "T"):
            A[f"{scan.sides[0]}_{k}"] *= 1.12
    sub, sp = scan.sub, scan.spacing
    x, y, z = axes(scan.origin, sp, scan.shape)
    zp = (z[:, None] + ((np.arange(sub) - (sub - 1) / 2) * sp[2] / sub)[None, :]).ravel()
    scan.grid = Grid(x, y, zp)
    return scan


def _scan_from_label(A: Dict[str, float], rng: np.random.Generator, shape, spacing, z_supersample,
                     kits_label: Volume) -> Scan:
    """The reference label's grid in canonical order, its kidneys, and the body placed around them."""
    if shape is not None or spacing is not None:
        raise InputError("shape and spacing come from kits_label; leave them None")
    reo = canonical_reorient(kits_label)
    canon = reo.volume(kits_label)
    sp = canon.spacing
    sub = check_sub(z_supersample, sp[2])
    label = np.asarray(canon.array)
    grid0 = Grid(*axes(canon.origin, sp, canon.shape))
    comps = find_kidneys(label, grid0)
    sides = place_from_label(A, rng, comps, grid0)
    return Scan(canon.shape, sp, canon.origin, sub, sides, reorient=reo, label=label, comps=comps)


def check_sub(z_supersample, sz: float) -> int:
    """Sub-slices painted per output slice: ``z_supersample``, checked, or 1 up to 2.5 mm slices, else 3."""
    if z_supersample is None:
        return 1 if sz <= 2.5 else 3
    if not isinstance(z_supersample, (int, np.integer)) or z_supersample < 1 or z_supersample % 2 == 0:
        raise InputError(f"z_supersample must be a positive odd integer, got {z_supersample!r}")
    return int(z_supersample)


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
