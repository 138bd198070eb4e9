"""Stage 4, the choice between tumor candidates (report 000), and the rules added to it.

A candidate is a 26-connected component of the tumor mask on a kidney's
crop. It is kept when its mean probability reaches the candidate threshold
(report 000: 0.8), and then rejected again when it is too small, borders the
kidney over too little of its surface (probably outside the kidney) or has
water attenuation (a probable simple cyst). :func:`rejection` says why, in
words the report and the findings table show.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple

import cc3d
import numpy as np
from scipy import ndimage

from ..findings import measure
from ..config import PostprocessConfig
from ..findings.findings import Candidate
from ..geometry.volume import Volume


@dataclass(frozen=True)
class Scored:
    """One tumor candidate of a crop: its bounding slices, its voxels there, and stage 4's verdict."""

    sl: Tuple[slice, ...]
    sub: np.ndarray
    vol_ml: float
    score: float
    hu: float
    contact: float
    why: str  # "" = kept


def kidney_contact(cand: np.ndarray, kidney: np.ndarray, spacing_zyx) -> float:
    """Fraction of the surface of ``cand`` (by area: voxel faces weighted by their size) that borders ``kidney``.

    Faces on the arrays' edge count as surface that does not border the kidney.
    """
    cand = np.pad(cand, 1)
    kid = np.pad(kidney & ~cand[1:-1, 1:-1, 1:-1], 1)
    total = touch = 0.0
    for axis in range(3):
        lo = tuple(slice(0, -1) if a == axis else slice(None) for a in range(3))
        hi = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        area = float(np.prod([s for a, s in enumerate(spacing_zyx) if a != axis]))
        total += np.count_nonzero(cand[lo] ^ cand[hi]) * area
        touch += (np.count_nonzero(cand[lo] & kid[hi]) + np.count_nonzero(cand[hi] & kid[lo])) * area
    return float(touch / total) if total else 0.0


def score_candidates(tprob: np.ndarray, kvol: Volume, post: PostprocessConfig, kidney: np.ndarray,
                      first: np.ndarray):
    """Stage 4 on one crop: connected components of the tumor mask, each scored and judged.

    ``kidney``: stage 2's kidney on the crop, what a candidate's contact is measured against;
    ``first``: the first pass's region on the crop. Contact is measured on the part of a candidate
    inside it, so a growth pass, which only adds voxels outside it, does not change a tumor's verdict.
    Components under ``post.min_listed_ml`` are specks: removed from the component map, only counted.
    Returns the component map, the scored candidates (map value = position + 1) and the number of specks.
    """
    mask = drop_small_slice_components(tprob >= post.tumor_threshold, kvol.spacing_zyx, post.min_slice_component_mm2)
    cc, ncomp = cc3d.connected_components(mask, connectivity=26, return_N=True)
    out: List[Scored] = []
    specks = 0
    vox_ml = kvol.voxel_volume_ml()
    counts = np.bincount(cc.ravel(), minlength=ncomp + 1)[1:]
    if ncomp and post.min_listed_ml > 0:
        small = counts * vox_ml < post.min_listed_ml
        if small.any():
            specks = int(small.sum())
            keep = np.flatnonzero(~small)
            remap = np.zeros(ncomp + 1, cc.dtype)
            remap[keep + 1] = np.arange(1, keep.size + 1)
            cc, counts, ncomp = remap[cc], counts[keep], int(keep.size)
    if ncomp:
        # one pass over the crop for all components: an untrained or uncertain model can give hundreds
        means = ndimage.mean(tprob, cc, index=np.arange(1, ncomp + 1))
        for c, sl in enumerate(ndimage.find_objects(cc), start=1):
            sub = cc[sl] == c
            vol_ml = float(counts[c - 1]) * vox_ml
            score = float(means[c - 1])
            hu = core_hu(kvol.array[sl], sub, kvol.spacing_zyx)
            # one voxel more on each side: the kidney it borders
            wide = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
            contact = kidney_contact((cc[wide] == c) & first[wide], kidney[wide], kvol.spacing_zyx)
            out.append(Scored(sl, sub, vol_ml, score, hu, contact, rejection(score, vol_ml, hu, contact, post)))
    return cc, keep_largest(out, post.max_tumors_per_kidney), specks


NOT_LARGEST = "not among the largest"


def keep_largest(scored: List[Scored], n: Optional[int]) -> List[Scored]:
    """Of the kept candidates, only the ``n`` largest stay kept (report 002's largest component); None: all."""
    kept = sorted((sc for sc in scored if not sc.why), key=lambda sc: -sc.vol_ml)
    if n is None or len(kept) <= n:
        return scored
    drop = {id(sc) for sc in kept[n:]}
    why = f"{NOT_LARGEST} {n} kept on this kidney (max_tumors_per_kidney)"
    return [replace(sc, why=why) if id(sc) in drop else sc for sc in scored]


def drop_small_slice_components(mask: np.ndarray, spacing_zyx, min_mm2: float) -> np.ndarray:
    """``mask`` without the 2D (8-connected) components of each axial slice smaller than ``min_mm2`` (report 003)."""
    if min_mm2 <= 0 or not mask.any():
        return mask
    min_voxels = float(min_mm2) / (float(spacing_zyx[1]) * float(spacing_zyx[2]))
    out = mask.copy()
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        comps, n = ndimage.label(mask[k], structure=np.ones((3, 3), bool))
        small = np.bincount(comps.ravel(), minlength=n + 1) < min_voxels
        small[0] = False
        out[k][small[comps]] = False
    return out


def core_hu(hu: np.ndarray, mask: np.ndarray, spacing_zyx, depth_mm: float = 2.0) -> float:
    """Median HU of a candidate's core (voxels at least ``depth_mm`` inside it), as a radiologist places a
    measurement ROI in a lesion's centre to avoid partial volume with its wall; all voxels when none is that deep."""
    inner = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing_zyx)[1:-1, 1:-1, 1:-1] >= depth_mm
    core = inner if inner.any() else mask
    return float(np.median(hu[core]))


OUTSIDE = "borders the kidney"
SMALL = "too small"


def rejection(score: float, vol_ml: float, hu: float, contact: float, post: PostprocessConfig) -> str:
    """Why stage 4 rejects a candidate ("" = kept): probability first, then size, kidney contact, water attenuation."""
    if score < post.candidate_threshold:
        return f"mean probability {score:.2f} < {post.candidate_threshold:g}"
    if vol_ml < post.min_candidate_ml:
        return f"{SMALL} ({vol_ml:.2f} mL < {post.min_candidate_ml:g} mL)"
    if post.min_kidney_contact is not None and contact < post.min_kidney_contact:
        return (f"{OUTSIDE} over {100 * contact:.0f} % of its surface (< {100 * post.min_kidney_contact:g} %): "
                "probably outside the kidney")
    if post.cyst_max_hu is not None and hu <= post.cyst_max_hu:
        return f"water attenuation (core {hu:.0f} HU <= {post.cyst_max_hu:g}): probable simple cyst"
    return ""


def candidate_records(scored: Sequence[Scored], first_id: int, kidney_index: int, side: str, kvol: Volume) -> List[Candidate]:
    """The findings of one kidney's scored candidates, numbered from ``first_id`` (``kvol``: the crop they lie on)."""
    out = []
    spacing = kvol.spacing_zyx
    for c, sc in enumerate(scored):
        k_idx, j_idx, i_idx = (np.mean(a) + s.start for a, s in zip(np.nonzero(sc.sub), sc.sl))
        centre = tuple(round(float(v), 2) for v in kvol.index_to_world([i_idx, j_idx, k_idx]))
        out.append(Candidate(
            id=first_id + c, kidney_index=kidney_index, side=side, volume_ml=round(sc.vol_ml, 3),
            axial_diameter_mm=round(measure.max_axial_diameter_mm(sc.sub, spacing), 2),
            diameter_3d_mm=round(measure.max_diameter_3d_mm(sc.sub, spacing), 2),
            mean_probability=round(sc.score, 4), kept=not sc.why, centre_lps_mm=centre,
            core_hu=round(sc.hu, 1), rejected_because=sc.why, kidney_contact=round(sc.contact, 3),
        ))
    return out
