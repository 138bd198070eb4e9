"""Slicer's RAS volume geometry to the core's LPS ``Volume`` and back (numpy only).

Slicer (MRML) keeps a scalar volume as image data with origin 0 and spacing 1
plus a 4x4 IJK->RAS matrix that holds the whole geometry:
``ras = M[:3, :3] @ (i, j, k) + M[:3, 3]``; ``slicer.util.arrayFromVolume``
gives the voxels indexed ``[k, j, i]``. The core works in ITK's LPS world,
which differs from RAS by the sign of the first two coordinates
(``lps = (-r, -a, s)``). Nothing here imports Slicer or VTK: the caller turns
its ``vtkMatrix4x4`` into a numpy array (``slicer.util.arrayFromVTKMatrix``).
"""
from __future__ import annotations

import itertools
from typing import Optional, Sequence

import numpy as np

from .volume import InputError, RoiWorld, Volume

# RAS <-> LPS: the same diagonal both ways
_FLIP = np.array([-1.0, -1.0, 1.0])


def ras_to_lps(points) -> np.ndarray:
    """RAS mm ``(3,)`` or ``(N, 3)`` (x, y, z order) to LPS mm, same shape; the flip is its own inverse
    (LPS to RAS)."""
    return _flip(points)


def _flip(points) -> np.ndarray:
    p = np.asarray(points, dtype=float)
    if p.ndim not in (1, 2) or p.shape[-1] != 3:
        raise ValueError(f"expected points of shape (3,) or (N, 3), got {p.shape}")
    return p * _FLIP


def volume_from_slicer(array_kji: np.ndarray, ijk_to_ras, meta: Optional[dict] = None) -> Volume:
    """A core ``Volume`` (LPS) from a Slicer volume's voxels and IJK->RAS matrix.

    ``array_kji``: voxels indexed ``[k, j, i]`` (``slicer.util.arrayFromVolume``);
    it is not copied, so copy it first if the node's voxels may change.
    ``ijk_to_ras``: 4x4 matrix (numpy or nested sequence) mapping ``(i, j, k, 1)``
    to RAS mm. Spacing is the norm of each of its first three columns (mm), the
    direction those columns normalised and turned to LPS, the origin its
    translation turned to LPS. Raises ``InputError`` for a matrix that is not an
    invertible affine 4x4.
    """
    m = _check_matrix(ijk_to_ras)
    linear = m[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if not np.all(spacing > 0):
        raise InputError(f"the IJK to RAS matrix has a zero-length axis (spacing {tuple(spacing)})")
    direction_ras = linear / spacing
    if abs(np.linalg.det(direction_ras)) < 1e-6:
        raise InputError("the IJK to RAS matrix is singular: its axes are not independent")
    direction_lps = _FLIP[:, None] * direction_ras  # negate the R and A rows
    origin_lps = _FLIP * m[:3, 3]
    return Volume(np.asarray(array_kji), spacing=tuple(spacing), origin=tuple(origin_lps),
                  direction=tuple(direction_lps.ravel()), meta=dict(meta or {}))


def ijk_to_ras_from_volume(vol: Volume) -> np.ndarray:
    """The 4x4 IJK->RAS matrix (numpy float64) of ``vol``; inverse of :func:`volume_from_slicer`.

    In Slicer: ``node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(m))``
    after ``slicer.util.updateVolumeFromArray(node, vol.array)``.
    """
    m = np.eye(4)
    m[:3, :3] = _FLIP[:, None] * vol.direction_matrix * np.asarray(vol.spacing)[None, :]
    m[:3, 3] = _FLIP * np.asarray(vol.origin)
    return m


def roi_from_slicer(center_ras: Sequence[float], size_mm: Sequence[float],
                    ras_to_roi_axes: Optional[np.ndarray] = None) -> "RoiWorld":
    """The LPS axis-aligned box (mm) that holds a Slicer markups ROI.

    ``center_ras``: the ROI centre in RAS mm; ``size_mm``: its edge lengths
    along its own x, y, z axes (``roiNode.GetSize()``). ``ras_to_roi_axes``: 3x3
    whose *columns* are the ROI's x, y, z axes as RAS directions, i.e. the
    rotation part of ``roiNode.GetObjectToWorldMatrix`` (None: axis aligned);
    columns are normalised here. A rotated ROI gives the box around its eight
    corners, so no part of the ROI is cut off.
    """
    c = np.asarray(center_ras, dtype=float).reshape(-1)
    half = np.asarray(size_mm, dtype=float).reshape(-1) / 2.0
    if c.shape != (3,) or half.shape != (3,):
        raise ValueError("the ROI centre and size need 3 numbers each")
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(half))) or np.any(half <= 0):
        raise InputError(f"the region of interest needs a finite, positive size, got {tuple(2 * half)} mm")
    axes = np.eye(3) if ras_to_roi_axes is None else np.asarray(ras_to_roi_axes, dtype=float)
    if axes.shape != (3, 3):
        raise ValueError(f"ROI axes must be a 3x3 matrix, got shape {axes.shape}")
    norms = np.linalg.norm(axes, axis=0)
    if np.any(norms < 1e-9) or abs(np.linalg.det(axes / norms)) < 1e-6:
        raise InputError("the region of interest's axes are degenerate")
    axes = axes / norms
    corners = np.array([c + axes @ (half * np.array(s)) for s in itertools.product((-1.0, 1.0), repeat=3)])
    lps = ras_to_lps(corners)
    return RoiWorld(tuple(float(v) for v in lps.min(axis=0)), tuple(float(v) for v in lps.max(axis=0)))


def _check_matrix(matrix) -> np.ndarray:
    m = np.asarray(matrix, dtype=float)
    if m.shape != (4, 4):
        raise InputError(f"expected a 4x4 IJK to RAS matrix, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise InputError("the IJK to RAS matrix has non-finite values")
    if not np.allclose(m[3], (0.0, 0.0, 0.0, 1.0)):
        raise InputError(f"the IJK to RAS matrix is not affine (last row {tuple(m[3])})")
    return m
