"""A small cascade result made by hand for the candidate edits (test_findings_table.py, test_slicer_candidates*.py).

Two kidneys side by side and three tumor candidates: 1 kept, inside the left kidney; 2 rejected and
outside the kidney (beside the left one, as one rejected for bordering the kidney over too little of
its surface); 3 rejected, its right half inside the right kidney and its left half outside.
"""
from __future__ import annotations

import numpy as np

from KidneyTumorSegLib.findings.findings import CascadeResult, Candidate, Kidney
from KidneyTumorSegLib.geometry.volume import Volume

SHAPE = (12, 24, 48)  # k, j, i
SPACING = (2.0, 2.0, 4.0)  # x, y, z mm
ROWS, SLICES = slice(10, 14), slice(4, 8)
LEFT, RIGHT = slice(4, 16), slice(32, 44)  # the kidneys' columns
KEPT, OUTSIDE, HALF = slice(8, 12), slice(18, 24), slice(28, 36)  # the candidates' columns
HALF_INSIDE = slice(32, 36)


def box(columns, rows=slice(6, 18), slices=slice(2, 10)) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[slices, rows, columns] = True
    return mask


def candidate_masks():
    """Candidate id -> its voxels."""
    return {1: box(KEPT, ROWS, SLICES), 2: box(OUTSIDE, ROWS, SLICES), 3: box(HALF, ROWS, SLICES)}


def candidate_result() -> CascadeResult:
    """The result as the cascade would give it (label, sides and candidate map on one grid)."""
    masks = candidate_masks()
    left, right = box(LEFT), box(RIGHT)
    label = np.zeros(SHAPE, np.uint8)
    label[left | right] = 1  # candidate 3's inside half is kidney; candidates 2 and 3's outside parts are not
    label[masks[1]] = 2
    sides = np.where(left, 1, 0).astype(np.uint8)
    sides[right] = 2
    cand = np.zeros(SHAPE, np.uint16)
    for cid, mask in masks.items():
        cand[mask] = cid
    image = Volume(np.where(label > 0, 150, -100).astype(np.int16), spacing=SPACING, meta={"source": "by hand"})
    kidneys = [Kidney(0, "left", 1.0, 1.0, (0.0, 0.0, 0.0)), Kidney(1, "right", 1.0, 1.0, (0.0, 0.0, 0.0))]
    tumors = [Candidate(1, 0, "left", 0.1, 8.0, 9.0, 0.95, True, (0.0, 0.0, 0.0)),
              Candidate(2, 0, "left", 0.1, 8.0, 9.0, 0.9, False, (0.0, 0.0, 0.0),
                        rejected_because="borders the kidney over 5% of its surface: probably outside the kidney"),
              Candidate(3, 1, "right", 0.1, 8.0, 9.0, 0.5, False, (0.0, 0.0, 0.0),
                        rejected_because="mean probability 0.50 < 0.8")]
    return CascadeResult("ok", image.with_array(label), image.with_array(sides), image.with_array(cand),
                         kidneys, tumors)


def image_of(result: CascadeResult) -> Volume:
    """A CT for the result (kidneys bright), on its grid."""
    return result.label.with_array(np.where(result.label.array > 0, 150, -100).astype(np.int16),
                                   meta={"source": "by hand"})
