"""Grid and random-field helpers of the phantom generator.

The phantom is painted on an axis-aligned world grid (identity direction):
``x`` (columns, patient left +), ``y`` (rows, posterior +) and ``z``
(slices, superior +) coordinate vectors in mm. Structures are evaluated
only inside their bounding boxes with broadcast coordinates, which keeps a
512x512x200 case fast and small.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage as ndi


@dataclass
class Grid:
    """World coordinates (mm) of the painted voxel centres along each axis."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (len(self.z), len(self.y), len(self.x))

    def box(self, lo: Sequence[float], hi: Sequence[float]):
        """Index slices and broadcast coordinates of the voxels inside the world box ``[lo, hi]`` (x, y, z).

        Returns ``(slices_kji, X, Y, Z)`` with ``X`` shaped (1, 1, ni), ``Y`` (1, nj, 1),
        ``Z`` (nk, 1, 1) as float32, or None when the box misses the grid.
        """
        sl = []
        for vec, a, b in zip((self.z, self.y, self.x), (lo[2], lo[1], lo[0]), (hi[2], hi[1], hi[0])):
            i0 = int(np.searchsorted(vec, a, side="left"))
            i1 = int(np.searchsorted(vec, b, side="right"))
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
        Z = self.z[sl[0]].astype(np.float32)[:, None, None]
        Y = self.y[sl[1]].astype(np.float32)[None, :, None]
        X = self.x[sl[2]].astype(np.float32)[None, None, :]
        return tuple(sl), X, Y, Z


def _axis_weights(q: np.ndarray, q0: float, h: float, m: int):
    t = (np.asarray(q, dtype=np.float64) - q0) / h
    i0 = np.clip(np.floor(t).astype(np.int64), 0, max(m - 2, 0))
    w = np.clip(t - i0, 0.0, 1.0).astype(np.float32)
    return i0, np.minimum(i0 + 1, m - 1), w


@dataclass
class Lattice:
    """A smooth random field stored on a coarse lattice, sampled by separable linear interpolation."""

    values: np.ndarray  # (nz, ny, nx) float32
    origin: Tuple[float, float, float]  # world (x, y, z) of values[0, 0, 0]
    h: float

    def sample(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Field on the product grid ``z x y x x`` (array order (k, j, i)), float32."""
        out = self.values
        for axis, q, q0 in ((0, z, self.origin[2]), (1, y, self.origin[1]), (2, x, self.origin[0])):
            i0, i1, w = _axis_weights(np.atleast_1d(q), q0, self.h, out.shape[axis])
            shp = [1, 1, 1]
            shp[axis] = len(w)
            w = w.reshape(shp)
            a = np.take(out, i0, axis=axis)
            b = np.take(out, i1, axis=axis)
            b -= a
            b *= w
            a += b
            out = a
        return out


def make_lattice(rng: np.random.Generator, lo: Sequence[float], hi: Sequence[float], corr_mm: float,
                 coarse_mix: Optional[Tuple[float, float]] = None) -> Lattice:
    """Zero-mean, unit-variance smooth random field covering the world box ``[lo, hi]`` (x, y, z mm).

    ``corr_mm`` is the correlation length (Gaussian smoothing of white noise at
    lattice spacing ``corr_mm / 2``). ``coarse_mix=(corr2, weight)`` adds a
    second, coarser component before normalising.
    """
    h = corr_mm / 2.0
    n = [int(np.ceil((b - a) / h)) + 3 for a, b in zip(lo, hi)]
    origin = tuple(float(a - h) for a in lo)
    v = rng.standard_normal((n[2], n[1], n[0]), dtype=np.float32)
    v = ndi.gaussian_filter(v, 1.0, mode="wrap")
    v /= max(float(v.std()), 1e-6)
    if coarse_mix is not None:
        corr2, weight = coarse_mix
        f = max(corr2 / corr_mm, 1.0)
        small = [max(int(np.ceil(s / f)) + 2, 2) for s in v.shape]
        c = rng.standard_normal(small, dtype=np.float32)
        c = ndi.gaussian_filter(c, 1.0, mode="wrap")
        c /= max(float(c.std()), 1e-6)
        c = ndi.zoom(c, [s / m for s, m in zip(v.shape, small)], order=1, grid_mode=False)[: v.shape[0], : v.shape[1], : v.shape[2]]
        v = v + weight * c
        v /= max(float(v.std()), 1e-6)
    return Lattice(np.ascontiguousarray(v, dtype=np.float32), origin, h)


def box_field(rng: np.random.Generator, X: np.ndarray, Y: np.ndarray, Z: np.ndarray, corr_mm: float) -> np.ndarray:
    """Unit-variance smooth random field on the broadcast box coordinates from :meth:`Grid.box`."""
    x, y, z = X.ravel(), Y.ravel(), Z.ravel()
    lat = make_lattice(rng, (x[0], y[0], z[0]), (x[-1], y[-1], z[-1]), corr_mm)
    return lat.sample(x, y, z)


def paint(tissue_box: np.ndarray, mask: np.ndarray, code: int, allow: Optional[np.ndarray] = None) -> np.ndarray:
    """Set ``code`` where ``mask`` holds and the current code is allowed (``allow`` is a 256-entry LUT).

    Returns the mask actually painted.
    """
    if allow is not None:
        mask = mask & allow[tissue_box]
    tissue_box[mask] = code
    return mask


def rotation(u: np.ndarray, v_hint: np.ndarray) -> np.ndarray:
    """Orthonormal frame with first axis ``u`` and second axis closest to ``v_hint`` (columns u, v, w)."""
    u = np.asarray(u, float) / np.linalg.norm(u)
    v = np.asarray(v_hint, float) - np.dot(v_hint, u) * u
    v /= np.linalg.norm(v)
    return np.stack([u, v, np.cross(u, v)], axis=1)


def local_coords(R: np.ndarray, c: Sequence[float], X, Y, Z):
    """Coordinates along the columns of ``R`` relative to centre ``c`` (broadcast arrays)."""
    dx, dy, dz = X - np.float32(c[0]), Y - np.float32(c[1]), Z - np.float32(c[2])
    R = R.astype(np.float32)
    return tuple(dx * R[0, n] + dy * R[1, n] + dz * R[2, n] for n in range(3))


def capsule_dist(p0: Sequence[float], p1: Sequence[float], X, Y, Z) -> np.ndarray:
    """Distance (mm) from the broadcast points to the segment ``p0 -> p1``."""
    p0 = np.asarray(p0, np.float32)
    d = np.asarray(p1, np.float32) - p0
    L2 = float(np.dot(d, d)) or 1e-6
    dx, dy, dz = X - p0[0], Y - p0[1], Z - p0[2]
    t = np.clip((dx * d[0] + dy * d[1] + dz * d[2]) / np.float32(L2), 0.0, 1.0)
    return np.sqrt((dx - t * d[0]) ** 2 + (dy - t * d[1]) ** 2 + (dz - t * d[2]) ** 2)


def paint_tube(tissue: np.ndarray, grid: Grid, points: Sequence[Sequence[float]], radius: float, code: int,
               allow: Optional[np.ndarray], wall: Optional[Tuple[float, int]] = None) -> None:
    """Paint a polyline tube (union of capsules); ``wall=(thickness, code)`` paints an outer wall first."""
    for p0, p1 in zip(points[:-1], points[1:]):
        lo = np.minimum(p0, p1) - radius - 1
        hi = np.maximum(p0, p1) + radius + 1
        b = grid.box(lo, hi)
        if b is None:
            continue
        sl, X, Y, Z = b
        d = capsule_dist(p0, p1, X, Y, Z)
        tb = tissue[sl]
        if wall is not None:
            # a wall must not cut into the lumen of the previous segment at a joint
            wall_allow = allow.copy() if allow is not None else np.ones(256, bool)
            wall_allow[code] = False
            lumen_allow = wall_allow.copy()
            lumen_allow[wall[1]] = True
            paint(tb, (d < radius) & (d >= radius - wall[0]), wall[1], wall_allow)
            paint(tb, d < radius - wall[0], code, lumen_allow)
        else:
            paint(tb, d < radius, code, allow)
