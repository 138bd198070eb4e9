"""Anatomy the cascade names kidneys by: the patient's midline, the spine, left and right.

LPS world coordinates: +x is the patient's left. The canonical grid's i axis
runs along +x (see :func:`geometry.canonical_reorient`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import cc3d
import numpy as np

from ..geometry.boxes import box_from_mask
from ..geometry.volume import Volume


@dataclass(frozen=True)
class Midline:
    """The patient's midline (LPS x, mm) and whether the body is cut by the field of view on either side.

    With the body cut on the patient's right (``cut_right``), the visible body's centre lies left of the
    true midline, so what lies left of ``x`` is certainly left; likewise for ``cut_left``.
    """

    x: float
    cut_right: bool = False
    cut_left: bool = False
    from_spine: bool = False  # x is the vertebral column's, not the visible body's centre: no cut moves it

    def certain(self, side: str) -> bool:
        """True when a kidney named ``side`` from this midline is on that side whatever the cut part held."""
        if self.from_spine:
            return True
        if side == "left":
            return not self.cut_left
        return not self.cut_right

    @property
    def one_sided_cut(self) -> bool:
        return self.cut_left != self.cut_right and not self.from_spine


_BONE_HU = 300.0  # above enhanced renal cortex and vessels in the portal phase; the vertebra's shell and body
_MIN_VERTEBRA_CM2 = 3.0


def spine_x(can: Volume, zrange: Tuple[int, int]) -> Optional[float]:
    """LPS x (mm) of the vertebral column at the kidneys' levels, or None where it is not found.

    In up to 12 axial slices of ``zrange`` (canonical k), the largest 2D bone component (> 300 HU,
    at least 3 cm2) is the vertebra at these levels (ribs are thinner, the pelvis lower). The
    vertebral column is a column: the median x of the slices whose component centre lies within
    10 mm (in x) of the median, when at least half the slices do; otherwise (the spine cut away,
    and the largest pieces are ribs here and there) None.
    """
    step = max(1, int(round(2.0 / min(can.spacing[:2]))))
    k0, k1 = max(0, int(zrange[0])), min(can.shape[0], int(zrange[1]))
    if k1 <= k0:
        return None
    ks = np.unique(np.linspace(k0, k1 - 1, num=min(12, k1 - k0)).astype(int))
    pix_cm2 = (can.spacing[0] * step) * (can.spacing[1] * step) / 100.0
    xs = []
    for k in ks:
        bone = can.array[k, ::step, ::step] > _BONE_HU
        if not bone.any():
            continue
        cc = cc3d.connected_components(bone, connectivity=8)
        counts = np.bincount(cc.ravel())[1:]
        c = int(np.argmax(counts))
        if counts[c] * pix_cm2 < _MIN_VERTEBRA_CM2:
            continue
        jj, ii = np.nonzero(cc == c + 1)
        xs.append(can.index_to_world([float(ii.mean()) * step, float(jj.mean()) * step, float(k)])[:2])
    if len(xs) * 2 < len(ks):
        return None
    centres = np.asarray(xs, float)
    column = np.abs(centres[:, 0] - np.median(centres[:, 0])) <= 10.0
    if int(column.sum()) * 2 < len(ks):
        return None
    return float(np.median(centres[column, 0]))


def midline_x(can: Volume) -> Midline:
    """Patient midline (LPS x, mm): centre of the body's extent in x, and where the field of view cuts the body.

    The body is the largest air-separated object in a coarse copy; its
    mid-x is robust to one-sided anatomy (one kidney) and to the couch.
    The canonical grid's i axis runs along +x (the patient's left).
    """
    step = max(1, int(round(4.0 / min(can.spacing[:2]))))
    zs = max(1, can.shape[0] // 16)
    small = can.array[::zs, ::step, ::step] > -500
    if not small.any():
        return Midline(float(can.index_to_world(np.array(can.shape[::-1]) / 2.0)[0]))
    cc, n = cc3d.connected_components(small, connectivity=6, return_N=True)
    counts = np.bincount(cc.ravel())[1:]
    body = cc == (int(np.argmax(counts)) + 1)
    cols = np.nonzero(body.any(axis=(0, 1)))[0]
    mid_i = (cols.min() + cols.max()) / 2.0 * step
    x = float(can.index_to_world([mid_i, can.shape[1] / 2.0, can.shape[0] / 2.0])[0])
    return Midline(x, cut_right=bool(cols.min() == 0), cut_left=bool(cols.max() == small.shape[2] - 1))


def patient_midline(can: Volume, zrange: Tuple[int, int]) -> Tuple[Midline, List[str]]:
    """The midline kidneys are named from, and a message when it is the spine's.

    The visible body's centre, unless the field of view cuts the body on one side only: that moves the
    centre by what the cut took, the spine's x (at the slices of ``zrange``) not.
    """
    midline = midline_x(can)
    if not midline.one_sided_cut:
        return midline, []
    sx = spine_x(can, zrange)
    if sx is None:
        return midline, []
    cut = "right" if midline.cut_right else "left"
    return (Midline(sx, midline.cut_right, midline.cut_left, from_spine=True),
            [f"the field of view cuts the body on the patient's {cut}: left and right are named from the spine"])


def assign_sides(comps, roi_vol: Volume, midline: Midline, crossing_mm: float):
    """Name each kidney component left / right / horseshoe (LPS: +x is the patient's left).

    Returns ``[(side, mask)]`` and the messages it has for the user. Two components on one side of
    the midline are anatomically unlikely (crossed ectopia is rare; more often one of them is not
    kidney): where that side is certain (the field of view does not cut the body on the other
    side) both keep its name and a message asks for a check; otherwise the midline is probably
    misplaced by the cut, and the more left one is named left.
    """
    out, notes = [], []
    for m in comps:
        xs = world_x_extent(roi_vol, m)
        cx = centre_world(roi_vol, m)[0]
        # a body cut on one side only moves the estimate into that side's kidney: no horseshoe from it
        if xs[0] < midline.x - crossing_mm and xs[1] > midline.x + crossing_mm and not midline.one_sided_cut:
            side = "horseshoe"
        else:
            side = "left" if cx > midline.x else "right"
        out.append((side, m))
    if len(out) == 2 and out[0][0] == out[1][0] and "horseshoe" not in (out[0][0], out[1][0]):
        side = out[0][0]
        if midline.certain(side):
            notes.append(f"two kidney-like components on the patient's {side}, both listed as {side} kidneys: one of "
                         "them is probably not kidney (or a crossed ectopic kidney); check both")
        else:
            a, b = out
            ax, bx = centre_world(roi_vol, a[1])[0], centre_world(roi_vol, b[1])[0]
            out = [("left" if ax > bx else "right", a[1]), ("left" if bx >= ax else "right", b[1])]
            cut = " and ".join(n for n, c in (("right", midline.cut_right), ("left", midline.cut_left)) if c)
            notes.append(f"the field of view cuts the body on the patient's {cut}: "
                         "the midline is uncertain, and the two kidneys were named by their position to each other")
    return out, notes


def world_x_extent(vol: Volume, mask: np.ndarray) -> Tuple[float, float]:
    """The LPS x range (mm) of ``mask``'s box on ``vol``'s grid, voxel edges included on the i axis."""
    b = box_from_mask(mask)
    corners = np.array([[i, j, k] for k in b[0] for j in b[1] for i in b[2]], float)
    corners[:, 0] -= 0.5
    xs = vol.index_to_world(corners)[:, 0]
    return float(xs.min()), float(xs.max())


def split_sides(vol: Volume, mask: np.ndarray, x: float) -> np.ndarray:
    """A horseshoe kidney's ``mask`` as a sides map: 1 (left) where LPS x > ``x`` (the midline), else 2."""
    i = np.arange(vol.shape[2], dtype=float)
    xs = vol.index_to_world(np.stack([i, np.zeros_like(i), np.zeros_like(i)], -1))[:, 0]
    left_cols = xs > x
    out = np.zeros(mask.shape, np.uint8)
    out[mask & left_cols[None, None, :]] = 1
    out[mask & ~left_cols[None, None, :]] = 2
    return out


def centre_world(vol: Volume, mask: np.ndarray) -> Tuple[float, float, float]:
    """The LPS centre (mm, rounded to 0.01) of ``mask``'s voxels on ``vol``'s grid."""
    k, j, i = (float(np.mean(a)) for a in np.nonzero(mask))
    return tuple(round(float(v), 2) for v in vol.index_to_world([i, j, k]))  # type: ignore[return-value]
