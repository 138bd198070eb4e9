"""Does the result look like real kidneys? A failed model must not give a confident-looking result.

On a real CT outside its training data the shipped phantom model called the vertebral body a
horseshoe kidney and the liver a 163 mm tumor, with status "ok". These checks look only at the
result and the CT, never at the model, and each gives a reason in plain words; any reason makes the
result's status ``implausible`` (nothing is hidden or removed: the annotator decides):

- a kidney's volume (tumor and cysts included), or its tissue alone, outside what real kidneys
  measure: the 370 real KiTS19/KiTS23 label maps in ``../shared/data`` (``benchmarks/kidney_volumes.py``);
- a kidney whose voxels are largely fat (HU <= -30) or dense bone (HU >= 400) rather than soft tissue;
- a kidney whose centre is not beside the spine (within ``MIN_LATERAL_MM`` of the patient's midline,
  as a horseshoe kidney or a vertebra taken for one is), or two kidneys on the same side;
- a kept tumor larger than any real one, more than ``MAX_TUMOR_TO_KIDNEY`` times its kidney's tissue, or
  less compact than 99% of real ones (``benchmarks/tumor_shapes.py``);
- a kidney or kept tumor touching the edge of the field of view (part of it may be missing).

A tumor larger than its kidney's remaining tissue is only noted (``notes``): real kidneys have that too.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import numpy as np

from ..geometry.volume import Volume

# The 370 real KiTS19/KiTS23 label maps of ../shared/data, 730 kidneys (components >= 5 mL;
# benchmarks/kidney_volumes.py, 2026-12-06): a kidney with its tumors and cysts measures 42.7 mL at the
# least and 2674.5 mL at the most (median 232.6); its tissue alone (label 1) 18.7 to 659.3 mL, 43.0 at
# p0.5; tumor and cyst together up to 2590.9 mL, and up to 35.2 times the kidney's remaining tissue.
# The ranges are the smallest and largest real ones, rounded outwards, but for the least tissue: p0.5
# (4 of the 730 real kidneys have less; a kidney stage run on the wrong anatomy leaves about 20-40 mL).
KIDNEY_ML_RANGE = (40.0, 2700.0)
KIDNEY_TISSUE_ML_RANGE = (43.0, 660.0)
MAX_TUMOR_ML = 2600.0
MAX_TUMOR_TO_KIDNEY = 36.0
# a tumor larger than its kidney's remaining tissue is real in 71 of those 730 kidneys: said, not flagged
# Compactness (volume / the ball of its largest 3D diameter) of the real tumors (benchmarks/tumor_shapes.py):
# the 327 of >= 5 mL p1 0.168, p5 0.238, median 0.437; the 206 of >= 20 mL all from 0.200 up but one
# (0.093). Judged from 20 mL (a smaller candidate's diameter is more its voxels' than its shape's; a held-out
# phantom's 8 mL tumor measured 0.10): below 0.168 a "tumor" is a strip (muscle, vessel), not a tumor.
MIN_TUMOR_COMPACTNESS = 0.168
MIN_COMPACTNESS_ML = 20.0
FAT_HU, BONE_HU = -30.0, 400.0
MAX_FAT_FRACTION = MAX_BONE_FRACTION = 0.2
MIN_LATERAL_MM = 20.0


def check(can: Volume, label: np.ndarray, sides: np.ndarray, candidates: np.ndarray, kidneys: Sequence,
          tumors: Sequence, midline_x: float) -> Dict[str, object]:
    """``{"plausible": bool, "reasons": [...], "notes": [...]}`` for a cascade result on the canonical grid ``can``.

    ``label``: 0/1/2; ``sides``: 1 left, 2 right (tumor included); ``candidates``: candidate ids;
    ``kidneys`` / ``tumors``: the result's ``Kidney`` and ``Candidate`` records; ``midline_x``: the
    patient's midline (LPS x, mm) the kidneys were named from.
    """
    reasons: List[str] = []
    reasons += _kidney_reasons(kidneys, midline_x)
    reasons += _tissue_reasons(np.asarray(can.array), label, sides, kidneys)
    tumor_reasons, notes = _tumor_reasons(tumors, kidneys, candidates)
    reasons += tumor_reasons
    return {"plausible": not reasons, "reasons": reasons, "notes": notes}


def _name(kidney, kidneys: Sequence = ()) -> str:
    """"the left kidney"; "the left kidney (kidney 2)" when two share a side."""
    name = f"the {kidney.side} kidney"
    if sum(1 for k in kidneys if k.side == kidney.side) > 1:
        name += f" (kidney {kidney.index + 1})"
    return name


def _kidney_reasons(kidneys: Sequence, midline_x: float) -> List[str]:
    lo, hi = KIDNEY_ML_RANGE
    tissue_lo, tissue_hi = KIDNEY_TISSUE_ML_RANGE
    reasons = []
    for k in kidneys:
        if not lo <= k.volume_with_tumor_ml <= hi:
            reasons.append(f"{_name(k, kidneys)} measures {k.volume_with_tumor_ml:.0f} mL; real kidneys measure "
                           f"{lo:.0f}-{hi:.0f} mL")
        elif not tissue_lo <= k.volume_ml <= tissue_hi:
            reasons.append(f"{_name(k, kidneys)} has {k.volume_ml:.0f} mL of kidney tissue besides its tumors; real kidneys "
                           f"have {tissue_lo:.0f}-{tissue_hi:.0f} mL")
        offset = abs(float(k.centre_lps_mm[0]) - float(midline_x))
        if offset < MIN_LATERAL_MM:
            reasons.append(f"{_name(k, kidneys)}'s centre is {offset:.0f} mm from the patient's midline: real kidneys "
                           "lie beside the spine (a vertebra taken for a kidney looks like this)")
        if k.touches_fov_edge:
            reasons.append(f"{_name(k, kidneys)} touches the edge of the field of view: part of it may be missing")
    named = [k.side for k in kidneys if k.side in ("left", "right")]
    for side in ("left", "right"):
        if named.count(side) > 1:
            reasons.append(f"two kidneys on the patient's {side}: one of them is probably not kidney")
    return reasons


def _tissue_reasons(hu: np.ndarray, label: np.ndarray, sides: np.ndarray, kidneys: Sequence) -> List[str]:
    reasons = []
    for value, side in ((1, "left"), (2, "right")):
        if not any(k.side in (side, "horseshoe") for k in kidneys):
            continue
        values = hu[(sides == value) & (label == 1)]
        if values.size == 0:
            continue
        fat, bone = float(np.mean(values <= FAT_HU)), float(np.mean(values >= BONE_HU))
        if fat > MAX_FAT_FRACTION:
            reasons.append(f"{fat:.0%} of the {side} kidney's voxels are fat (HU <= {FAT_HU:.0f})")
        if bone > MAX_BONE_FRACTION:
            reasons.append(f"{bone:.0%} of the {side} kidney's voxels are as dense as bone (HU >= {BONE_HU:.0f})")
    return reasons


def _tumor_reasons(tumors: Sequence, kidneys: Sequence, candidates: np.ndarray):
    """(reasons, notes) about the kept tumors."""
    reasons, notes = [], []
    by_index = {k.index: k for k in kidneys}
    on_edge = _ids_on_edge(candidates)
    for c in (c for c in tumors if c.kept):
        kidney = by_index.get(c.kidney_index)
        tissue = max(kidney.volume_ml, 1e-3) if kidney is not None else None
        if c.volume_ml > MAX_TUMOR_ML:
            reasons.append(f"tumor {c.id} measures {c.volume_ml:.0f} mL, more than any real kidney tumor "
                           f"({MAX_TUMOR_ML:.0f} mL)")
        elif tissue is not None and c.volume_ml > MAX_TUMOR_TO_KIDNEY * tissue:
            reasons.append(f"tumor {c.id} ({c.volume_ml:.0f} mL) is more than {MAX_TUMOR_TO_KIDNEY:.0f} times "
                           f"the size of its kidney ({kidney.volume_ml:.0f} mL of kidney tissue)")
        elif tissue is not None and c.volume_ml > tissue:
            notes.append(f"tumor {c.id} ({c.volume_ml:.0f} mL) is larger than its kidney's remaining tissue "
                         f"({kidney.volume_ml:.0f} mL), as in 71 of the 730 real KiTS kidneys: check it")
        compactness = _compactness(c)
        if c.volume_ml >= MIN_COMPACTNESS_ML and compactness < MIN_TUMOR_COMPACTNESS:
            reasons.append(f"tumor {c.id} is a strip, not a ball ({c.volume_ml:.0f} mL across "
                           f"{c.diameter_3d_mm:.0f} mm), less compact than 99% of real kidney tumors")
        if c.id in on_edge:
            reasons.append(f"tumor {c.id} touches the edge of the field of view: part of it may be missing")
    return reasons, notes


def _compactness(c) -> float:
    """Volume over that of the ball whose diameter is the candidate's largest 3D diameter (1 for a ball)."""
    ball_ml = math.pi / 6.0 * (max(float(c.diameter_3d_mm), 1e-3) / 10.0) ** 3
    return float(c.volume_ml) / ball_ml


def _ids_on_edge(candidates: np.ndarray) -> set:
    """Candidate ids with a voxel on any face of the array."""
    faces = [np.take(candidates, end, axis=axis).ravel() for axis in range(candidates.ndim) for end in (0, -1)]
    return {int(v) for v in np.unique(np.concatenate(faces)) if v}
