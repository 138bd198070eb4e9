"""What the cascade found: kidneys, tumor candidates, and the result object."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

import numpy as np

from ..geometry.volume import Volume
from .terminology import KITS_KIDNEY, KITS_TUMOR, SEG_KIDNEY_LEFT, SEG_KIDNEY_RIGHT, SEG_TUMOR

K = TypeVar("K")  # a kidney's key: a segment id, a label value



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
    # R.E.N.A.L. nephrometry (nephrometry.Nephrometry.to_dict) of a kept tumor; None for a rejected candidate
    nephrometry: Optional[Dict[str, Any]] = None


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
    """Segment values for Slicer (uint8, :data:`terminology.SEG_NRRD_SEGMENTS`) from KiTS labels and the cascade's sides map."""
    seg = np.zeros(label.shape, np.uint8)
    kidney = label == KITS_KIDNEY
    seg[kidney & (sides == 1)] = SEG_KIDNEY_LEFT
    seg[kidney & (sides == 2)] = SEG_KIDNEY_RIGHT
    # kidney voxels outside any side region cannot occur from the cascade; keep them visible anyway
    seg[kidney & (sides == 0)] = SEG_KIDNEY_RIGHT
    seg[label == KITS_TUMOR] = SEG_TUMOR
    return seg


def kits_labels(seg: np.ndarray) -> np.ndarray:
    """KiTS labels (uint8: 1 kidney, 2 tumor) from segment values (:func:`segment_map`'s output, edited or not)."""
    out = np.zeros(seg.shape, np.uint8)
    out[(seg == SEG_KIDNEY_LEFT) | (seg == SEG_KIDNEY_RIGHT)] = KITS_KIDNEY
    out[seg == SEG_TUMOR] = KITS_TUMOR
    return out


def apply_candidate_choice(result: CascadeResult, kept_ids) -> np.ndarray:
    """KiTS label array (input grid) with exactly the candidates ``kept_ids`` as tumor.

    Each candidate follows :func:`choose_candidate`, with the kidney region the cascade found
    (``result.sides > 0``). Used by the annotator's "add / remove candidate" actions.
    """
    kept_ids = set(int(i) for i in kept_ids)
    label = result.label.array
    kidney, tumor = label == KITS_KIDNEY, label == KITS_TUMOR
    cand = result.candidates.array
    inside_kidney = result.sides.array > 0
    for c in result.tumors:
        kidneys, tumor = choose_candidate({1: kidney}, tumor, cand == c.id, c.id in kept_ids, inside_kidney)
        kidney = kidneys[1]
    out = np.where(kidney, KITS_KIDNEY, 0).astype(label.dtype)
    out[tumor] = KITS_TUMOR
    return out


def choose_candidate(kidneys: Mapping[K, np.ndarray], tumor: np.ndarray, mask: np.ndarray, keep: bool,
                     kidney_region: np.ndarray, spacing_kji: Sequence[float] = (1.0, 1.0, 1.0),
                     ) -> Tuple[Dict[K, np.ndarray], np.ndarray]:
    """The kidney masks and the tumor mask (boolean, one grid) once tumor candidate ``mask`` is kept or rejected.

    The one rule of the command line's and the Slicer module's candidate edits. Kept: the candidate's
    voxels become tumor and leave the kidneys. Rejected: they leave the tumor and the kidneys; those
    inside ``kidney_region`` (the kidney region the cascade found, ``CascadeResult.sides > 0``) become
    kidney, of the nearest of ``kidneys`` where there are several (a left and a right kidney, a split
    horseshoe; ``spacing_kji``: voxel size in mm), and the rest background: a candidate outside the
    kidney (e.g. rejected as bordering it over too little of its surface) is not kidney either.
    """
    if keep:
        return {k: m & ~mask for k, m in kidneys.items()}, tumor | mask
    rest = {k: m & ~mask for k, m in kidneys.items()}
    return assign_to_nearest(mask & kidney_region, rest, spacing_kji), tumor & ~mask


def assign_to_nearest(mask: np.ndarray, regions: Mapping[K, np.ndarray], spacing_kji: Sequence[float],
                      margin: int = 16) -> Dict[K, np.ndarray]:
    """``regions`` with every ``mask`` voxel added to the nearest of them (arrays [k, j, i], spacing in mm).

    With no region voxel at all, the first region takes the whole mask. The distance transform runs
    on the mask's box plus ``margin`` voxels (a whole CT would need gigabytes for the nearest-voxel
    indices), and on the whole array only if no region is that near.
    """
    from scipy import ndimage

    order = list(regions)
    if not order:
        return {}
    if len(order) == 1 or not mask.any():
        return {k: (m | mask) if k == order[0] else m.copy() for k, m in regions.items()}
    labels = np.zeros(mask.shape, np.uint8)
    for n, k in enumerate(order, start=1):
        labels[regions[k] & ~mask] = n
    if not labels.any():
        return {k: (m | mask) if k == order[0] else m.copy() for k, m in regions.items()}
    where = np.nonzero(mask)
    box = tuple(slice(max(int(w.min()) - margin, 0), int(w.max()) + margin + 1) for w in where)
    if not labels[box].any():
        box = tuple(slice(0, n) for n in mask.shape)
    sub = labels[box]
    nearest = ndimage.distance_transform_edt(sub == 0, sampling=spacing_kji, return_distances=False, return_indices=True)
    nearest_label = np.zeros(mask.shape, np.uint8)
    nearest_label[box] = sub[tuple(nearest)]
    return {k: regions[k] | (mask & (nearest_label == n)) for n, k in enumerate(order, start=1)}
