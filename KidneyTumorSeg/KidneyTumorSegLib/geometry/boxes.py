"""Index boxes: half-open ``((k0, k1), (j0, j1), (i0, i1))`` ranges on an array's grid (numpy only).

One helper for each job: the tight box of a mask, a box grown by a margin,
the index expression of a box. :class:`records.Crop` cuts a box out of an
array and puts it back.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

Box = Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]  # ((k0,k1),(j0,j1),(i0,i1)), half-open


def box_from_mask(mask: np.ndarray) -> Box:
    """Tight half-open box around the non-zero voxels, one ``(start, stop)`` per axis; raises if empty.

    Works for any number of axes (a 2D slice gives two pairs).
    """
    mask = np.asarray(mask)
    out = []
    for ax in range(mask.ndim):
        # one axis at a time: a reduction per axis is far cheaper than the coordinates of every voxel
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        if idx.size == 0:
            raise ValueError("empty mask has no bounding box")
        out.append((int(idx[0]), int(idx[-1]) + 1))
    return tuple(out)  # type: ignore[return-value]


def box_slices(box: Box) -> Tuple[slice, ...]:
    """The index expression of ``box``: ``array[box_slices(box)]`` is the box's contents."""
    return tuple(slice(a, b) for a, b in box)


def expand_box(box: Box, margin_vox: Sequence[float], shape: Sequence[int] = None, clip: bool = True) -> Box:
    """Grow ``box`` by ``margin_vox`` voxels per axis ``(k, j, i)``; clip to ``shape`` if given."""
    out = []
    for n, ((a, b), m) in enumerate(zip(box, margin_vox)):
        m = int(np.ceil(m))
        lo, hi = a - m, b + m
        if shape is not None and clip:
            lo, hi = max(lo, 0), min(hi, int(shape[n]))
        out.append((lo, hi))
    return tuple(out)  # type: ignore[return-value]
