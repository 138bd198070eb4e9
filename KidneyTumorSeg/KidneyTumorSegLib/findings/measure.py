"""Lesion measurements a radiologist reports: volume and maximal diameters.

Conventions:

* Masks are numpy arrays indexed ``[k, j, i]``; ``spacing_zyx`` is the voxel
  size in that order, millimetres.
* Diameters are Feret diameters (the largest distance between two points of
  the object) measured **edge to edge**, as a radiologist's calipers are: the
  object is taken as the union of its voxels drawn as boxes, so the diameter
  is the largest distance between two voxel *corners*. A box of ``n`` voxels
  along an axis measures ``n * spacing`` (not ``(n - 1) * spacing``).
  ``edge_to_edge=False`` measures between voxel centres instead.
* "Axial" means array axis 0 is the slice axis, which holds for canonical
  arrays (:func:`geometry.canonical_reorient`). The caller must pass canonical
  arrays to :func:`max_axial_diameter_mm`; on a raw KiTS19 array (slice axis
  first but axes swapped) it would still measure in-slice, but an oblique
  acquisition's "slices" are not axial.

The diameter is exact: the farthest pair of points lies on the convex hull,
so only the hull's vertices (of the boundary voxels' corners) are compared.
"""
from __future__ import annotations

import itertools
import logging
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from ..geometry.boxes import box_from_mask, box_slices

log = logging.getLogger(__name__)

# Pairwise distances are checked in blocks of about this many pairs to bound memory.
_BLOCK_PAIRS = 2_000_000
# Below this many points a hull costs more than comparing every pair.
_BRUTE_FORCE_MAX = 64


def component_volume_ml(mask: np.ndarray, spacing_xyz: Sequence[float]) -> float:
    """Volume of the non-zero voxels of ``mask`` in millilitres (spacing in mm, any order)."""
    return float(np.count_nonzero(mask)) * float(np.prod(spacing_xyz)) / 1000.0


def max_diameter_3d_mm(
    mask: np.ndarray,
    spacing_zyx: Sequence[float],
    direction: Optional[Sequence[float]] = None,
    edge_to_edge: bool = True,
) -> float:
    """Largest 3D distance across the object (Feret diameter), mm; 0 for an empty mask.

    ``mask``: 3D array ``[k, j, i]``; ``spacing_zyx``: voxel size ``(k, j, i)``
    in mm. ``direction``: optional ITK row-major 3x3 (columns = world
    directions of ``i, j, k``); it only matters for non-orthogonal (sheared)
    grids, since rotations and flips keep distances.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"expected a 3D mask, got shape {mask.shape}")
    pts = _boundary_points_mm(mask, spacing_zyx, edge_to_edge)
    if pts is None:
        return 0.0
    if direction is not None:
        d = np.asarray(direction, dtype=float).reshape(3, 3)
        # points are in (k, j, i) order; the matrix maps (i, j, k) to world
        pts = pts[:, ::-1] @ d.T
    return feret_diameter(pts)[0]


def max_axial_diameter_mm(
    mask: np.ndarray, spacing_zyx: Sequence[float], edge_to_edge: bool = True
) -> float:
    """Largest in-slice diameter over the axial slices (array axis 0), mm; 0 if empty.

    ``mask`` must be canonical (axis 0 inferior to superior, see module
    docstring); ``spacing_zyx`` is the voxel size ``(k, j, i)`` in mm.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"expected a 3D mask, got shape {mask.shape}")
    box = _bbox(mask)
    if box is None:
        return 0.0
    sub = mask[box] != 0
    best = 0.0
    for k in np.flatnonzero(sub.any(axis=(1, 2))):
        pts = _boundary_points_mm(sub[k], spacing_zyx[1:], edge_to_edge)
        if pts is not None:
            best = max(best, feret_diameter(pts)[0])
    return best


def feret_diameter(points: np.ndarray) -> Tuple[float, np.ndarray, np.ndarray]:
    """Largest distance between two of ``points`` ``(N, d)`` and that pair (exact).

    Uses the convex hull's vertices; falls back to a lower-dimensional hull
    when the points are coplanar or colinear (where Qhull refuses).
    """
    pts = np.asarray(points, dtype=float)
    if len(pts) == 0:
        raise ValueError("no points")
    if len(pts) == 1:
        return 0.0, pts[0], pts[0]
    cand = _hull_vertices(pts)
    return _farthest_pair(cand)


# --------------------------------------------------------------------------
def _bbox(mask: np.ndarray) -> Optional[Tuple[slice, ...]]:
    """The slices of ``mask``'s non-zero box, or None when it has none."""
    return box_slices(box_from_mask(mask)) if np.any(mask) else None


def _boundary_points_mm(mask: np.ndarray, spacing: Sequence[float], edge_to_edge: bool):
    """Points whose convex hull is the object's: boundary voxel corners (or centres), in mm."""
    box = _bbox(mask)
    if box is None:
        return None
    sub = mask[box] != 0  # cropping first keeps the work proportional to the object
    offset = np.array([s.start for s in box], dtype=float)
    if edge_to_edge:
        idx = np.argwhere(_boundary_corners(sub)).astype(float) - 0.5
    else:
        edge = sub & ~ndimage.binary_erosion(sub, border_value=0)
        idx = np.argwhere(edge).astype(float)
    return (idx + offset) * np.asarray(spacing, dtype=float)


def _boundary_corners(sub: np.ndarray) -> np.ndarray:
    """Corner lattice (shape + 1 per axis): corners touching both inside and outside voxels.

    Corner ``c`` touches the voxels ``c - 1`` and ``c`` along every axis; its
    position in voxel-index units is ``c - 0.5``.
    """
    padded = np.pad(sub, 1)
    shape = tuple(n + 1 for n in sub.shape)
    touch_in = np.zeros(shape, dtype=bool)
    all_in = np.ones(shape, dtype=bool)
    for shift in itertools.product((0, 1), repeat=sub.ndim):
        view = padded[tuple(slice(s, s + n) for s, n in zip(shift, shape))]
        touch_in |= view
        all_in &= view
    return touch_in & ~all_in


def _hull_vertices(pts: np.ndarray) -> np.ndarray:
    if len(pts) <= _BRUTE_FORCE_MAX:
        return pts
    centred = pts - pts.mean(axis=0)
    # the rank tells which hull to build: Qhull needs full-dimensional input
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    scale = max(float(sv[0]), 1e-12)
    rank = int(np.sum(sv > scale * 1e-9))
    if rank == 0:
        return pts[:1]
    if rank == 1:
        t = centred @ vt[0]
        return pts[[int(np.argmin(t)), int(np.argmax(t))]]
    proj = centred @ vt[:rank].T if rank < pts.shape[1] else pts
    try:
        return pts[ConvexHull(proj).vertices]
    except QhullError:  # numerically near-degenerate: comparing all pairs is still exact
        log.debug("convex hull failed on %d points; comparing all pairs", len(pts))
        return pts


def _farthest_pair(pts: np.ndarray) -> Tuple[float, np.ndarray, np.ndarray]:
    best, bi, bj = -1.0, 0, 0
    rows = max(1, _BLOCK_PAIRS // len(pts))
    for start in range(0, len(pts), rows):
        block = pts[start:start + rows]
        d2 = ((block[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
        flat = int(np.argmax(d2))
        r, c = divmod(flat, d2.shape[1])
        if d2[r, c] > best:
            best, bi, bj = float(d2[r, c]), start + r, c
    return float(np.sqrt(best)), pts[bi], pts[bj]
