"""Targets of report 003's regression branches, made from each training batch's labels.

Report 003 trains every network with a second output beside the
segmentation: its localisation V-Net regresses five landmark heat maps,
its kidney and tumor networks a boundary heat map. Both are built per axial
slice (section 3.2): a 1 at each point, a Gaussian of ``sigma`` voxels
(3; 2 for the tumor boundary), then the slice divided by its maximum.

* ``landmarks`` (5 channels): in each slice, for each connected component of
  the foreground (each kidney), its leftmost, topmost, rightmost and
  bottommost voxel and its centre, one channel each.
* ``boundary`` (1 channel): the foreground's edge voxels in each slice.

A network with ``heads`` (``{"landmarks": 5}``, ``{"boundary": 1}``) gets
these as ``head_targets`` of :class:`~ktstrain.losses.DeepSupervisionLoss`,
whose weighted MSE is report 003's. At inference the heads are not used (a
network in eval mode returns its segmentation only).
"""
from __future__ import annotations

from typing import Dict, Mapping

import numpy as np
import torch
from scipy import ndimage

HEADS = {"landmarks": 5, "boundary": 1}


def _normalised(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian per slice (axes -2, -1) and each slice divided by its maximum; ``maps`` ``(C, k, j, i)``."""
    out = ndimage.gaussian_filter(maps.astype(np.float32), sigma=(0, 0, sigma, sigma), mode="constant")
    peak = out.max(axis=(2, 3), keepdims=True)
    return np.divide(out, peak, out=np.zeros_like(out), where=peak > 0)


def landmark_points(mask: np.ndarray) -> np.ndarray:
    """``(5, k, j, i)`` with a 1 at each slice's components' left, top, right, bottom and centre voxels."""
    points = np.zeros((5,) + mask.shape, np.float32)
    for k in range(mask.shape[0]):
        comps, n = ndimage.label(mask[k])
        for c in range(1, n + 1):
            jj, ii = np.nonzero(comps == c)
            left, right = np.argmin(ii), np.argmax(ii)
            top, bottom = np.argmin(jj), np.argmax(jj)
            for ch, (j, i) in enumerate([(jj[left], ii[left]), (jj[top], ii[top]), (jj[right], ii[right]),
                                         (jj[bottom], ii[bottom]),
                                         (int(round(jj.mean())), int(round(ii.mean())))]):
                points[ch, k, j, i] = 1.0
    return points


def boundary_points(mask: np.ndarray) -> np.ndarray:
    """``(1, k, j, i)``: the foreground voxels of each slice with a background neighbour in that slice."""
    inner = ndimage.binary_erosion(mask, structure=np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool),
                                   border_value=0)
    return (mask & ~inner)[None].astype(np.float32)


def head_targets(label: torch.Tensor, heads: Mapping[str, int], role: str,
                 sigma: float = 3.0) -> Dict[str, torch.Tensor]:
    """Targets ``{head: (N, C, *spatial)}`` for a batch's stage target ``label`` ``(N, *spatial)`` (3D or 2D).

    The foreground is ``label > 0``; the tumor stage's boundary uses sigma 2 (report 003).
    """
    unknown = sorted(set(heads) - set(HEADS))
    if unknown:
        raise ValueError(f"no training target for head(s) {unknown}; heads with targets: {sorted(HEADS)}")
    for name, n in heads.items():
        if int(n) != HEADS[name]:
            raise ValueError(f"head {name!r} has {n} channel(s); its target has {HEADS[name]}")
    fg = label.detach().cpu().numpy() > 0
    flat = fg.ndim == 3  # a batch of 2D slices
    if flat:
        fg = fg[:, None]
    out: Dict[str, torch.Tensor] = {}
    for name in heads:
        make = landmark_points if name == "landmarks" else boundary_points
        s = 2.0 if name == "boundary" and role == "tumor" else sigma
        maps = np.stack([_normalised(make(m), s) for m in fg])
        if flat:
            maps = maps[:, :, 0]
        out[name] = torch.from_numpy(maps).to(label.device)
    return out
