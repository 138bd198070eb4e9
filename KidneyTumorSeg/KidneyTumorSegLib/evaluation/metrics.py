"""KiTS challenge metrics for one case: Dice, surface Dice and HD95, in mm.

Regions follow the KiTS19 evaluation code (``starter_code/evaluation.py``):
"kidney" is ``label > 0`` (kidney and tumor together), "tumor" is
``label > 1``, and the composite score is the mean of the two Dice values.
On KiTS21/23 references (label 3 = cyst) ``label > 1`` is therefore KiTS21's
"masses" region (tumor + cyst).

Empty masks (the 0/0 cases), chosen and why:

* Dice of two empty masks is ``empty_dice``, 1.0 by default. The KiTS19 code
  computes ``2*tp / (|pred| + |gt|)`` and meant to return 0.0 through
  ``except ZeroDivisionError`` -- but numpy integer division yields ``nan``
  with a warning instead of raising, so that branch never runs. It never
  mattered there (every KiTS19 case has a tumor). KiTS21's ``metrics.py``
  handles the case explicitly with 1.0 ("not defined if both are empty"),
  which is also right for us: a tumor-free prediction on a tumor-free case is
  correct. Pass ``empty_dice=0.0`` for the KiTS19 intent.
* Surface Dice follows KiTS21: both empty 1.0, exactly one empty 0.0.
* HD95: both empty 0.0 mm; exactly one empty ``inf`` (no surface to measure
  to; ``inf`` keeps the failure visible where ``nan`` would be silently
  dropped by averages -- :mod:`evaluate` counts such cases separately).

Surface Dice uses MONAI's ``compute_surface_dice`` with ``use_subvoxels=True``
(DeepMind's surfel-area method, the ``surface-distance`` package KiTS21
used); HD95 uses MONAI's ``compute_hausdorff_distance`` (the larger of the
two directed 95th percentiles of distances between boundary voxels). Both get
the voxel spacing, so anisotropic voxels are measured in mm. The masks are
cropped to their joint bounding box (plus a margin) first: distances between
the two boundaries never leave that box, so the result is unchanged and a
512x512x600 case costs only its kidneys' size.
"""
from __future__ import annotations

import logging
import warnings
from typing import Dict, Sequence

import numpy as np
import torch
from scipy import ndimage

log = logging.getLogger(__name__)

DEFAULT_SURFACE_TOLERANCE_MM = 2.0
_MARGIN = 2  # voxels around the joint box, so boundaries at the box's edge are found


def dice(pred: np.ndarray, gt: np.ndarray, empty_dice: float = 1.0) -> float:
    """Dice of two boolean masks (any shape, same shape); ``empty_dice`` if both are empty."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    denom = int(np.count_nonzero(pred)) + int(np.count_nonzero(gt))
    if denom == 0:
        return float(empty_dice)
    return 2.0 * int(np.count_nonzero(pred & gt)) / denom


def surface_dice(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing_zyx: Sequence[float],
    tolerance_mm: float = DEFAULT_SURFACE_TOLERANCE_MM,
) -> float:
    """Normalised surface Dice of two 3D masks ``[k, j, i]`` at ``tolerance_mm``.

    ``spacing_zyx``: voxel size ``(k, j, i)`` in mm. Empty cases: see module docstring.
    """
    pair = _crop_pair(pred, gt)
    if isinstance(pair, float):
        return 1.0 if pair == 0.0 else 0.0
    from monai.metrics import compute_surface_dice

    p, g = pair
    with warnings.catch_warnings():
        # MONAI's own call of a deprecated argument would warn once per case
        warnings.simplefilter("ignore", FutureWarning)
        val = compute_surface_dice(
            p, g, class_thresholds=[float(tolerance_mm)], include_background=True,
            spacing=[float(s) for s in spacing_zyx], use_subvoxels=True,
        )
    return float(val.reshape(-1)[0])


def hd95_mm(pred: np.ndarray, gt: np.ndarray, spacing_zyx: Sequence[float], percentile: float = 95.0) -> float:
    """Symmetric ``percentile`` Hausdorff distance (mm) between the boundaries of two 3D masks.

    ``spacing_zyx``: voxel size ``(k, j, i)`` in mm. Both empty: 0.0; one empty: ``inf``.
    """
    pair = _crop_pair(pred, gt)
    if isinstance(pair, float):
        return 0.0 if pair == 0.0 else float("inf")
    from monai.metrics import compute_hausdorff_distance

    p, g = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        val = compute_hausdorff_distance(
            p, g, include_background=True, percentile=float(percentile),
            spacing=[float(s) for s in spacing_zyx],
        )
    return float(val.reshape(-1)[0])


def case_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing_zyx: Sequence[float],
    tolerance_mm: float = DEFAULT_SURFACE_TOLERANCE_MM,
    empty_dice: float = 1.0,
) -> Dict[str, float]:
    """All metrics of one case from two label maps on the same grid.

    ``pred``, ``gt``: integer label arrays ``[k, j, i]`` (0 background, 1
    kidney, 2 tumor; higher labels count as tumor, as in KiTS19's
    ``label > 1``). ``spacing_zyx``: voxel size ``(k, j, i)`` in mm.

    Returns kidney_dice, tumor_dice, composite (their mean),
    kidney_surface_dice, tumor_surface_dice (at ``tolerance_mm``),
    kidney_hd95_mm, tumor_hd95_mm, and the region volumes in mL
    (pred_kidney_ml, gt_kidney_ml, pred_tumor_ml, gt_tumor_ml; "kidney" is
    ``label > 0`` like its Dice).
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {gt.shape}")
    if len(spacing_zyx) != 3:
        raise ValueError(f"spacing_zyx must have 3 values, got {spacing_zyx}")
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    out: Dict[str, float] = {}
    for name, thr in (("kidney", 0), ("tumor", 1)):
        p = pred > thr
        g = gt > thr
        out[f"{name}_dice"] = dice(p, g, empty_dice)
        out[f"{name}_surface_dice"] = surface_dice(p, g, spacing_zyx, tolerance_mm)
        out[f"{name}_hd95_mm"] = hd95_mm(p, g, spacing_zyx)
        out[f"pred_{name}_ml"] = int(np.count_nonzero(p)) * voxel_ml
        out[f"gt_{name}_ml"] = int(np.count_nonzero(g)) * voxel_ml
    out["composite"] = (out["kidney_dice"] + out["tumor_dice"]) / 2.0
    order = ("kidney_dice", "tumor_dice", "composite", "kidney_surface_dice", "tumor_surface_dice",
             "kidney_hd95_mm", "tumor_hd95_mm", "pred_kidney_ml", "gt_kidney_ml", "pred_tumor_ml", "gt_tumor_ml")
    return {k: float(out[k]) for k in order}


def _crop_pair(pred: np.ndarray, gt: np.ndarray):
    """Both masks cropped to their joint box (+margin) as MONAI tensors ``[1, 1, k, j, i]``.

    Returns instead a float when at least one is empty: 0.0 both empty, 1.0 one empty.
    """
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"expected two 3D masks of one shape, got {pred.shape} and {gt.shape}")
    n_p, n_g = bool(pred.any()), bool(gt.any())
    if not (n_p and n_g):
        return 0.0 if not (n_p or n_g) else 1.0
    box = ndimage.find_objects((pred | gt).astype(np.uint8))[0]
    # pad with zeros beyond the array too: a mask touching the array's edge has a surface there
    crop = tuple(slice(max(b.start - _MARGIN, 0), min(b.stop + _MARGIN, n)) for b, n in zip(box, pred.shape))
    pads = [(_MARGIN - (b.start - c.start), _MARGIN - (c.stop - b.stop)) for b, c in zip(box, crop)]

    def prep(m: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.pad(m[crop], pads))[None, None]

    return prep(pred), prep(gt)
