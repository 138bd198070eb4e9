"""Binary-mask operations the cascade shares: the largest components, a dilation in millimetres.

Masks are boolean arrays ``(k, j, i)``; spacings are ``(k, j, i)`` in mm.
"""
from __future__ import annotations

from typing import List, Sequence

import cc3d
import numpy as np
from scipy import ndimage

from .boxes import box_from_mask, box_slices, expand_box


def largest_components(mask: np.ndarray, keep: int, min_ml: float, voxel_ml: float) -> List[np.ndarray]:
    """The ``keep`` largest 26-connected components at least ``min_ml`` large, largest first."""
    if not mask.any():
        return []
    cc, n = cc3d.connected_components(mask, connectivity=26, return_N=True)
    counts = np.bincount(cc.ravel(), minlength=n + 1)[1:]
    order = np.argsort(-counts, kind="stable")
    out = []
    for c in order[: max(keep, 0)]:
        if counts[c] * voxel_ml < min_ml or counts[c] == 0:
            continue
        out.append(cc == (c + 1))
    return out


def dilate_mm(mask: np.ndarray, mm: float, spacing_zyx: Sequence[float]) -> np.ndarray:
    """``mask`` grown by ``mm`` (Euclidean, in mm); a copy of it when ``mm <= 0`` or it is empty."""
    if mm <= 0 or not mask.any():
        return mask.copy()
    # the distance transform runs on the mask's box plus the dilation only, not on the whole array
    box = expand_box(box_from_mask(mask), [mm / s + 1 for s in spacing_zyx], shape=mask.shape)
    sl = box_slices(box)
    dist = ndimage.distance_transform_edt(~mask[sl], sampling=spacing_zyx)
    out = np.zeros_like(mask)
    out[sl] = dist <= mm
    return out
