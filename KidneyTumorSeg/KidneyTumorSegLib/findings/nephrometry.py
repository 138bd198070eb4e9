"""R.E.N.A.L. nephrometry (Kutikov and Uzzo, J Urol 2009) of a kidney tumor, from the segmentation alone.

Decision support, not diagnosis: every component is measured on the kidney and tumor masks, and three
of them (L, N, h) stand on an estimate of anatomy the segmentation does not label. A urologist scores
from the images; this score says what the masks imply.

Arrays are a kidney's crop of the **canonical** grid (``[k, j, i]`` = superior, posterior, left;
``geometry.records.Reorient``), spacing ``(k, j, i)`` in mm; ``kidney`` is its parenchyma (tumor
excluded), ``tumor`` one tumor.

* **R** (1-3 points: <= 4 cm, < 7 cm, >= 7 cm): the tumor's largest diameter (:data:`R_DIAMETER`,
  the convention that agreed best with the radiologists' sizes of KiTS19, ``benchmarks/renal_diameter.py``).
* **E** (1-3): the fraction of the tumor's volume outside the convex hull of the parenchyma (the
  kidney's convex surface): >= 50 % 1, some 2, none (under :data:`ENDOPHYTIC_MAX`) 3.
* **N** (1-3: >= 7 mm, > 4 mm, <= 4 mm): the gap between the tumor and the renal sinus. The sinus is
  *estimated* as the largest concavity of the parenchyma (inside its convex hull, neither kidney nor
  tumor, opened by one voxel), where the sinus fat, vessels and collecting system lie; none larger
  than :data:`MIN_SINUS_ML` (a kidney labelled with its sinus filled in): N is not estimated and the
  total is left out.
* **A** (a / p / x): the tumor's centre anterior or posterior of the kidney's centre by more than
  :data:`AP_FRACTION` of the kidney's thickness; x in between.
* **L** (1-3): the polar lines are *estimated* at a third and two thirds of the parenchyma's extent
  along its long axis (principal axis). Entirely beyond a polar line 1; crossing one 2; more than
  half between them, or crossing the kidney's middle, or entirely between them 3.
* **h** (suffix): the tumor touches the sinus estimate between the polar lines (the renal artery and
  vein themselves are not segmented).

Total R + E + N + L: 4-6 low, 7-9 moderate, 10-12 high complexity.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, Delaunay, QhullError

from . import measure
from ..geometry.volume import Volume

# R's diameter: the largest axial one between voxel centres, the convention closest to the radiologists' sizes
# of the KiTS19 cases in ../shared/data (benchmarks/renal_diameter.py; figures in the README)
R_AXIAL, R_EDGE_TO_EDGE = True, False
R_DIAMETER = f"{'axial' if R_AXIAL else '3D'}, {'edge to edge' if R_EDGE_TO_EDGE else 'centre to centre'}"
ENDOPHYTIC_MAX = 0.01  # a tumor with at most this fraction outside the hull counts as entirely endophytic
MIN_SINUS_ML = 0.5
AP_FRACTION = 0.15
POLAR_FRACTION = 1.0 / 3.0


@dataclass(frozen=True)
class Nephrometry:
    """One tumor's R.E.N.A.L. points and the measurements behind them (``n`` None: not estimated)."""

    r: int
    e: int
    n: Optional[int]
    a: str
    l: int  # noqa: E741 - the score's own letter
    hilar: bool
    diameter_mm: float
    exophytic_fraction: float
    sinus_gap_mm: Optional[float]
    interpolar_fraction: float

    @property
    def total(self) -> Optional[int]:
        return None if self.n is None else self.r + self.e + self.n + self.l

    @property
    def score(self) -> str:
        """The score as written in a report, e.g. ``"8ph"``; ``"R2 E1 N? L3 a"`` when N is not estimated."""
        suffix = self.a + ("h" if self.hilar else "")
        if self.total is None:
            return f"R{self.r} E{self.e} N? L{self.l} {suffix}"
        return f"{self.total}{suffix}"

    @property
    def complexity(self) -> Optional[str]:
        t = self.total
        return None if t is None else "low" if t <= 6 else "moderate" if t <= 9 else "high"

    def to_dict(self) -> Dict[str, Any]:
        return {"score": self.score, "total": self.total, "complexity": self.complexity, "R": self.r, "E": self.e,
                "N": self.n, "A": self.a, "L": self.l, "hilar": self.hilar, "diameter_mm": round(self.diameter_mm, 1),
                "diameter_convention": R_DIAMETER, "exophytic_fraction": round(self.exophytic_fraction, 3),
                "sinus_gap_mm": None if self.sinus_gap_mm is None else round(self.sinus_gap_mm, 1),
                "interpolar_fraction": round(self.interpolar_fraction, 3),
                "estimated": ["N (sinus estimate)", "L (polar lines at thirds)", "h (sinus estimate)"]}


@dataclass(frozen=True)
class KidneyFrame:
    """What every tumor of one kidney is scored against: the parenchyma's hull, sinus estimate and axes."""

    spacing: np.ndarray  # (k, j, i) mm
    hull: Optional[Delaunay]  # of the parenchyma's voxel corners, mm
    sinus: Optional[np.ndarray]  # bool on the crop, None when no concavity is large enough
    sinus_distance: Optional[np.ndarray]  # mm from the nearest sinus voxel, on the crop (once per kidney)
    centre: np.ndarray  # mm, (k, j, i)
    axis: np.ndarray  # unit long axis, pointing superior
    extent: tuple  # (lowest, highest) projection of the parenchyma on the axis, mm from the centre
    thickness_ap: float  # the parenchyma's extent along j (anterior-posterior), mm


def kidney_frame(kidney: np.ndarray, tumor_any: np.ndarray, spacing_zyx: Sequence[float]) -> KidneyFrame:
    """The frame of one kidney (``tumor_any``: all of its tumors, excluded from the sinus estimate)."""
    spacing = np.asarray(spacing_zyx, float)
    idx = np.argwhere(kidney)
    if len(idx) < 4:
        raise ValueError("the kidney has too few voxels for nephrometry")
    pts = idx * spacing
    centre = pts.mean(axis=0)
    _, vecs = np.linalg.eigh(np.cov((pts - centre).T))
    axis = vecs[:, -1] * (1.0 if vecs[0, -1] >= 0 else -1.0)  # component 0 is k: towards superior
    proj = (pts - centre) @ axis
    half = 0.5 * float(np.abs(axis) @ spacing)  # half a voxel along the axis
    hull = _hull(kidney, spacing)
    sinus = _sinus(kidney, tumor_any, spacing, hull) if hull is not None else None
    distance = None if sinus is None else ndimage.distance_transform_edt(~sinus, sampling=spacing)
    ap = float(np.ptp(pts[:, 1]) + spacing[1])
    return KidneyFrame(spacing, hull, sinus, distance, centre, axis,
                       (float(proj.min()) - half, float(proj.max()) + half), ap)


def renal_score(frame: KidneyFrame, tumor: np.ndarray) -> Nephrometry:
    """R.E.N.A.L. of ``tumor`` (bool, on the frame's crop)."""
    idx = np.argwhere(tumor)
    if not len(idx):
        raise ValueError("empty tumor mask")
    pts = idx * frame.spacing
    diameter = (measure.max_axial_diameter_mm if R_AXIAL else measure.max_diameter_3d_mm)(
        tumor, frame.spacing, edge_to_edge=R_EDGE_TO_EDGE)
    r = 1 if diameter <= 40.0 else 2 if diameter < 70.0 else 3
    outside = 1.0 if frame.hull is None else float(np.mean(frame.hull.find_simplex(pts) < 0))
    e = 1 if outside >= 0.5 else 2 if outside > ENDOPHYTIC_MAX else 3
    lo, hi = frame.extent
    lower, upper = lo + POLAR_FRACTION * (hi - lo), hi - POLAR_FRACTION * (hi - lo)
    t = (pts - frame.centre) @ frame.axis
    between = float(np.mean((t > lower) & (t < upper)))
    middle = 0.5 * (lo + hi)
    crosses_middle = bool(t.min() < middle < t.max())
    l_points = 1 if between == 0.0 else 3 if (between > 0.5 or crosses_middle) else 2
    gap = _sinus_gap(frame, tumor)
    n = None if gap is None else 1 if gap >= 7.0 else 2 if gap > 4.0 else 3
    dy = float(pts[:, 1].mean() - frame.centre[1])  # + posterior
    a = "p" if dy > AP_FRACTION * frame.thickness_ap else "a" if dy < -AP_FRACTION * frame.thickness_ap else "x"
    centre_t = float(t.mean())
    hilar = gap is not None and gap == 0.0 and lower < centre_t < upper
    return Nephrometry(r, e, n, a, l_points, hilar, diameter, outside, gap, between)


def _corners(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The corners (mm) of the mask's boundary voxels: their hull is the voxels' (drawn as boxes) hull."""
    boundary = mask & ~ndimage.binary_erosion(mask)
    idx = np.argwhere(boundary).astype(float)
    offsets = np.array([[a, b, c] for a in (-0.5, 0.5) for b in (-0.5, 0.5) for c in (-0.5, 0.5)])
    return ((idx[:, None, :] + offsets[None]) * spacing).reshape(-1, 3)


def _hull(kidney: np.ndarray, spacing: np.ndarray) -> Optional[Delaunay]:
    pts = _corners(kidney, spacing)
    try:
        return Delaunay(pts[ConvexHull(pts).vertices])
    except (QhullError, ValueError):  # flat or degenerate: no volume to be inside of
        return None


def _sinus(kidney: np.ndarray, tumor_any: np.ndarray, spacing: np.ndarray, hull: Delaunay) -> Optional[np.ndarray]:
    """The largest concavity of the parenchyma (inside its hull, neither kidney nor tumor), opened by a voxel."""
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in np.nonzero(kidney))  # the hull lies in it
    idx = np.argwhere(~kidney[box] & ~tumor_any[box]) + [b.start for b in box]
    inside = np.zeros(kidney.shape, bool)
    if len(idx):
        inside[tuple(idx.T)] = hull.find_simplex(idx * spacing) >= 0
    inside = ndimage.binary_opening(inside)
    labels, n = ndimage.label(inside)
    if not n:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    biggest = int(np.argmax(sizes)) + 1
    if sizes[biggest - 1] * float(np.prod(spacing)) / 1000.0 < MIN_SINUS_ML:
        return None
    return labels == biggest


def _sinus_gap(frame: KidneyFrame, tumor: np.ndarray) -> Optional[float]:
    """Gap (mm) between the tumor and the sinus estimate: 0 when they touch (26-neighbours), else the
    smallest distance between their voxel centres less the smallest voxel size; None without an estimate."""
    if frame.sinus is None:
        return None
    if (ndimage.binary_dilation(tumor, structure=np.ones((3, 3, 3), bool)) & frame.sinus).any():
        return 0.0
    return max(float(frame.sinus_distance[tumor].min()) - float(frame.spacing.min()), 0.0)


def nephrometry_on_grid(grid: Volume, kidney: np.ndarray, tumor: np.ndarray,
                        tumors: Optional[np.ndarray] = None) -> Nephrometry:
    """R.E.N.A.L. of ``tumor`` with arrays on any grid (``grid``'s geometry, e.g. the input CT's): reoriented to
    the canonical grid and cropped to the kidney and tumor. ``tumors``: all tumors of that kidney (default: this
    one), kept out of the sinus estimate. For an annotator's edit (a candidate kept by hand)."""
    from ..geometry.records import canonical_reorient

    reo = canonical_reorient(grid)
    kid, tum = reo.apply(np.asarray(kidney, bool)), reo.apply(np.asarray(tumor, bool))
    spacing = reo.volume(grid, array=kid).spacing_zyx
    every = tum if tumors is None else reo.apply(np.asarray(tumors, bool)) | tum
    where = np.nonzero(kid | tum)
    if not where[0].size:
        raise ValueError("empty kidney and tumor masks")
    box = tuple(slice(max(int(w.min()) - 2, 0), int(w.max()) + 3) for w in where)
    return renal_score(kidney_frame(kid[box] & ~every[box], every[box], spacing), tum[box])
