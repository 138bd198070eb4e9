"""What the cascade found: kidneys, tumor candidates, and the result object."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .volume import Volume

# label values of the segment map written to .seg.nrrd and shown in Slicer
SEGMENT_KIDNEY_LEFT = 1
SEGMENT_KIDNEY_RIGHT = 2
SEGMENT_TUMOR = 3


@dataclass
class Kidney:
    """One kidney (a kept component of the fine stage). Volumes in mL, centre in LPS mm."""

    index: int
    side: str  # "left" | "right" | "horseshoe"
    volume_ml: float  # kidney tissue (label 1)
    volume_with_tumor_ml: float  # label > 0 within this kidney
    centre_lps_mm: Tuple[float, float, float]
    touches_fov_edge: bool = False


@dataclass
class Candidate:
    """A tumor candidate: one connected component of the tumor stage's mask.

    ``id`` is its value in ``CascadeResult.candidates`` (the candidate map).
    Diameters follow :mod:`measure` (largest in-slice axial and largest 3D).
    """

    id: int
    kidney_index: int
    side: str
    volume_ml: float
    axial_diameter_mm: float
    diameter_3d_mm: float
    mean_probability: float
    kept: bool
    centre_lps_mm: Tuple[float, float, float]
    core_hu: Optional[float] = None  # median HU of its core (2 mm inside its edge; all of it when thinner)
    rejected_because: str = ""  # "" when kept; else why stage 4 rejected it
    kidney_contact: Optional[float] = None  # fraction of its surface (by area) that borders the kidney


@dataclass
class CascadeResult:
    """Everything a run produced, on the input's grid.

    ``label``: KiTS labels (0 background, 1 kidney, 2 tumor), uint8.
    ``sides``: 1 where a left kidney (tumor included) lies, 2 right, uint8.
    ``candidates``: uint16 map of every tumor candidate's id (kept or not), so
    an annotator can add a rejected one or remove a kept one.
    """

    status: str  # "ok" | "implausible" (plausibility's reasons) | "no_kidney"
    label: Volume
    sides: Volume
    candidates: Volume
    kidneys: List[Kidney] = field(default_factory=list)
    tumors: List[Candidate] = field(default_factory=list)
    specks_not_listed: int = 0  # components of the tumor mask under the listing floor (min_listed_ml)
    messages: List[str] = field(default_factory=list)
    timings_s: Dict[str, float] = field(default_factory=dict)
    roi_lps_mm: Optional[Tuple[Tuple[float, float, float], Tuple[float, float, float]]] = None
    canonical_image: Optional[Volume] = None  # the input in canonical orientation (for previews)
    canonical_label: Optional[Volume] = None
    # plausibility.check's {"plausible", "reasons"} (empty when nothing was checked: no kidney found)
    plausibility: Dict[str, Any] = field(default_factory=dict)

    def report(self) -> Dict[str, Any]:
        """JSON-able summary (no arrays)."""
        return {
            "status": self.status,
            "messages": list(self.messages),
            "plausibility": dict(self.plausibility),
            "kidneys": [asdict(k) for k in self.kidneys],
            "tumor_candidates": [asdict(c) for c in self.tumors],
            "kept_tumors": sum(1 for c in self.tumors if c.kept),
            "total_tumor_volume_ml": round(sum(c.volume_ml for c in self.tumors if c.kept), 3),
            "specks_not_listed": self.specks_not_listed,
            "roi_lps_mm": None if self.roi_lps_mm is None else [list(self.roi_lps_mm[0]), list(self.roi_lps_mm[1])],
            "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
            "label_values": {"0": "background", "1": "kidney", "2": "kidney tumor"},
        }


def segment_map(label: np.ndarray, sides: np.ndarray) -> np.ndarray:
    """Segment values for Slicer: 1 kidney left, 2 kidney right, 3 kidney tumor (uint8)."""
    seg = np.zeros(label.shape, np.uint8)
    kidney = label == 1
    seg[kidney & (sides == 1)] = SEGMENT_KIDNEY_LEFT
    seg[kidney & (sides == 2)] = SEGMENT_KIDNEY_RIGHT
    # kidney voxels outside any side region cannot occur from the cascade; keep them visible anyway
    seg[kidney & (sides == 0)] = SEGMENT_KIDNEY_RIGHT
    seg[label == 2] = SEGMENT_TUMOR
    return seg


def apply_candidate_choice(result: CascadeResult, kept_ids) -> np.ndarray:
    """KiTS label array (input grid) with exactly the candidates ``kept_ids`` as tumor.

    Voxels of a dropped candidate become kidney where they lie inside a
    kidney and background elsewhere; an added candidate becomes tumor. Used
    by the annotator's "add / remove candidate" actions.
    """
    kept_ids = set(int(i) for i in kept_ids)
    label = result.label.array.copy()
    cand = result.candidates.array
    inside_kidney = result.sides.array > 0
    for c in result.tumors:
        m = cand == c.id
        if c.id in kept_ids:
            label[m] = 2
        else:
            label[m & inside_kidney] = 1
            label[m & ~inside_kidney] = 0
    return label
