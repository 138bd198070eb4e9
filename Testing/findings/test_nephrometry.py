"""R.E.N.A.L. nephrometry (``findings.nephrometry``) on kidneys and tumors whose geometry is known by construction.

The kidney: an ellipsoid on the canonical grid (semi-axes 55 mm superior-inferior, 20 mm anterior-posterior,
25 mm left-right), centred at the origin, with a hilar notch on its medial side (x < -15 mm, |z| < 15 mm,
|y| < 8 mm) where the sinus lies. Its polar lines (thirds of its 110 mm) are at z = -18.3 and +18.3 mm.
Each tumor is a ball; its points follow from where the ball is put (the comments say why).
"""
from __future__ import annotations

import numpy as np
import pytest

from KidneyTumorSegLib.findings.nephrometry import kidney_frame, renal_score

SPACING = (2.0, 1.0, 1.0)  # (k, j, i) mm: thicker slices than pixels, as in CT
Z = np.arange(-120.0, 70.0, SPACING[0])
Y = np.arange(-50.0, 51.0, SPACING[1])
X = np.arange(-50.0, 51.0, SPACING[2])
ZZ, YY, XX = np.meshgrid(Z, Y, X, indexing="ij")


def _kidney(notch=True):
    kidney = (ZZ / 55) ** 2 + (YY / 20) ** 2 + (XX / 25) ** 2 <= 1
    if notch:
        kidney &= ~((XX < -15) & (np.abs(ZZ) < 15) & (np.abs(YY) < 8))
    return kidney


def _ball(z, y, x, r):
    return (ZZ - z) ** 2 + (YY - y) ** 2 + (XX - x) ** 2 <= r ** 2


def _score(tumor, notch=True):
    kidney = _kidney(notch) & ~tumor  # the tumor replaces the parenchyma it overlaps
    return renal_score(kidney_frame(kidney, tumor, SPACING), tumor)


def test_small_exophytic_upper_pole_tumor_scores_4p():
    # 30 mm (R1) ball on the upper pole, centred 12 mm posterior: mostly outside the kidney's convex surface
    # (E1), entirely above the upper polar line (L1), 20 mm and more from the hilar notch (N1), posterior (p)
    n = _score(_ball(50, 12, 0, 15))
    assert (n.r, n.e, n.n, n.l, n.a, n.hilar) == (1, 1, 1, 1, "p", False)
    assert n.score == "4p" and n.complexity == "low"
    assert n.exophytic_fraction > 0.5 and n.interpolar_fraction == 0.0
    assert 28.0 <= n.diameter_mm <= 32.0


def test_small_endophytic_tumor_against_the_sinus_scores_10xh():
    # 15 mm (R1) ball deep in the parenchyma between the polar lines (L3), against the hilar notch (N3, h),
    # inside the convex surface (E3), neither anterior nor posterior (x)
    n = _score(_ball(0, 0, -8.5, 7))
    assert (n.r, n.e, n.n, n.l, n.a, n.hilar) == (1, 3, 3, 3, "x", True)
    assert n.score == "10xh" and n.total == 10 and n.complexity == "high"
    assert n.exophytic_fraction <= 0.01 and n.sinus_gap_mm == 0.0


def test_large_lower_pole_tumor_scores_6x():
    # 80 mm (R3) ball below the lower pole, its top at z = -30: the parenchyma left reaches down to about -37,
    # so the lower polar line moves up to about -6 and the ball stays below it (L1); mostly outside (E1), far
    # from the notch (N1)
    n = _score(_ball(-70, 0, 0, 40))
    assert (n.r, n.e, n.n, n.l, n.a) == (3, 1, 1, 1, "x")
    assert n.score == "6x" and n.total == 6
    assert n.diameter_mm >= 70.0


def test_tumor_crossing_the_upper_polar_line_scores_l2_and_partly_exophytic_e2():
    # 24 mm (R1) ball on the lateral surface at z = 24: about a sixth of it lies below the upper polar line at
    # 18.3 mm (L2: crosses it, less than half between the lines), its centre 2.5 mm inside the surface (E2)
    n = _score(_ball(24, 0, 20, 12))
    assert (n.r, n.e, n.n, n.l) == (1, 2, 1, 2)
    assert 0.05 < n.interpolar_fraction < 0.5 and 0.01 < n.exophytic_fraction < 0.5
    assert n.score == "6x"


def test_tumor_across_the_kidneys_middle_scores_l3_even_if_mostly_polar():
    # a 44 mm (R2) exophytic ball centred on the lateral surface at z = -10 reaches across the middle (z = 0): L3
    n = _score(_ball(-10, 0, 26, 22))
    assert n.r == 2 and n.l == 3 and n.e in (1, 2)


def test_kidney_without_a_concavity_has_no_sinus_estimate_and_no_total():
    n = _score(_ball(50, 12, 0, 15), notch=False)
    assert n.n is None and n.total is None and n.complexity is None and not n.hilar
    assert n.score == "R1 E1 N? L1 p"
    d = n.to_dict()
    assert d["N"] is None and d["score"] == "R1 E1 N? L1 p" and d["sinus_gap_mm"] is None


def test_to_dict_names_every_component_and_the_estimates():
    d = _score(_ball(0, 0, -8.5, 7)).to_dict()
    assert {k: d[k] for k in ("score", "total", "R", "E", "N", "A", "L", "hilar")} == {
        "score": "10xh", "total": 10, "R": 1, "E": 3, "N": 3, "A": "x", "L": 3, "hilar": True}
    assert any(e.startswith("N") for e in d["estimated"]) and d["complexity"] == "high"


def test_empty_masks_are_refused():
    with pytest.raises(ValueError, match="too few voxels"):
        kidney_frame(np.zeros(ZZ.shape, bool), np.zeros(ZZ.shape, bool), SPACING)
    frame = kidney_frame(_kidney(), np.zeros(ZZ.shape, bool), SPACING)
    with pytest.raises(ValueError, match="empty tumor mask"):
        renal_score(frame, np.zeros(ZZ.shape, bool))
