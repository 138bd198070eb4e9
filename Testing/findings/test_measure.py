"""Lesion measurements: volumes and Feret diameters in mm, against analytic shapes and radiologists."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from KidneyTumorSegLib.findings.measure import (
    component_volume_ml,
    feret_diameter,
    max_axial_diameter_mm,
    max_diameter_3d_mm,
)

SPACING = (2.5, 0.8, 0.7)  # (k, j, i) mm, deliberately all different
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def box(shape=(12, 30, 30), z=(2, 6), y=(3, 20), x=(5, 12)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = True
    return m


def test_volume_ml():
    m = box()
    assert component_volume_ml(m, SPACING[::-1]) == pytest.approx(4 * 17 * 7 * 2.5 * 0.8 * 0.7 / 1000)
    assert component_volume_ml(np.zeros((2, 2, 2)), SPACING) == 0.0


def test_box_diameters_edge_to_edge_and_centre_to_centre():
    m = box()
    ext = np.array([4, 17, 7]) * SPACING  # physical size of the box, mm
    assert max_diameter_3d_mm(m, SPACING) == pytest.approx(np.linalg.norm(ext))
    assert max_axial_diameter_mm(m, SPACING) == pytest.approx(np.linalg.norm(ext[1:]))
    ctr = np.array([3, 16, 6]) * SPACING
    assert max_diameter_3d_mm(m, SPACING, edge_to_edge=False) == pytest.approx(np.linalg.norm(ctr))
    assert max_axial_diameter_mm(m, SPACING, edge_to_edge=False) == pytest.approx(np.linalg.norm(ctr[1:]))


@pytest.mark.parametrize("r", [6.0, 15.0])
def test_sphere_diameter_is_twice_the_radius(r):
    sp = np.array(SPACING)
    half = np.ceil(r / sp).astype(int) + 2
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, sp)], indexing="ij")
    ball = sum(g ** 2 for g in grids) <= r * r
    # voxel centres lie inside the sphere, so centre-to-centre is at most 2r and edge-to-edge
    # exceeds it by at most one voxel's diagonal
    d_ctr = max_diameter_3d_mm(ball, SPACING, edge_to_edge=False)
    d_edge = max_diameter_3d_mm(ball, SPACING)
    assert 2 * r - sp.max() <= d_ctr <= 2 * r + 1e-9
    assert 2 * r <= d_edge <= 2 * r + np.linalg.norm(sp)
    # the central axial slice is a disk of radius r
    a_edge = max_axial_diameter_mm(ball, SPACING)
    assert 2 * r <= a_edge <= 2 * r + np.linalg.norm(sp[1:])
    assert max_axial_diameter_mm(ball, SPACING, edge_to_edge=False) <= 2 * r + 1e-9


def test_degenerate_objects():
    one = np.zeros((5, 5, 5), bool)
    one[2, 2, 2] = True
    assert max_diameter_3d_mm(one, SPACING) == pytest.approx(np.linalg.norm(SPACING))
    assert max_diameter_3d_mm(one, SPACING, edge_to_edge=False) == 0.0
    line = np.zeros((3, 3, 200), bool)
    line[1, 1, :] = True  # colinear centres: no 3D hull
    assert max_diameter_3d_mm(line, SPACING, edge_to_edge=False) == pytest.approx(199 * 0.7)
    plane = np.zeros((3, 90, 90), bool)
    plane[1, 5:85, 5:85] = True  # coplanar centres
    assert max_diameter_3d_mm(plane, SPACING, edge_to_edge=False) == pytest.approx(math.hypot(79 * 0.8, 79 * 0.7))
    assert max_diameter_3d_mm(np.zeros((4, 4, 4)), SPACING) == 0.0
    assert max_axial_diameter_mm(np.zeros((4, 4, 4)), SPACING) == 0.0


def test_feret_matches_brute_force_on_random_blobs():
    rng = np.random.default_rng(1)
    for _ in range(5):
        m = rng.random((9, 14, 11)) > 0.8
        pts = np.argwhere(m) * np.array(SPACING)
        assert max_diameter_3d_mm(m, SPACING, edge_to_edge=False) == pytest.approx(pdist(pts).max())
        d, p, q = feret_diameter(pts)
        assert np.linalg.norm(p - q) == pytest.approx(d)


def test_axial_diameter_is_per_slice():
    m = np.zeros((10, 20, 20), bool)
    m[2, 5, 5] = True
    m[7, 15, 15] = True  # far apart in 3D, one voxel per slice
    assert max_axial_diameter_mm(m, SPACING) == pytest.approx(math.hypot(0.8, 0.7))
    assert max_diameter_3d_mm(m, SPACING) > 10.0


def test_direction_rotations_keep_distances():
    m = box()
    flip_swap = (0, 1, 0, -1, 0, 0, 0, 0, 1)  # i and j swapped, one flipped: a rotation
    assert max_diameter_3d_mm(m, SPACING, direction=flip_swap) == pytest.approx(max_diameter_3d_mm(m, SPACING))


# ---------------------------------------------------------------- real radiologist sizes
# Small KiTS19 cases with a single tumor component (few slices, so reading is fast).
RADIOLOGY_CASES = ["case_00004", "case_00007", "case_00009", "case_00010", "case_00011",
                   "case_00012", "case_00013", "case_00015", "case_00020", "case_00021"]


def test_diameters_agree_with_radiographic_size():
    folder = DATA / "kits19-labels"
    if not (folder / "kits.json").is_file():
        pytest.skip(f"real KiTS19 labels not available at {folder}")
    import SimpleITK as sitk

    from KidneyTumorSegLib.geometry.records import canonical_reorient
    from KidneyTumorSegLib.geometry.volume import Volume

    sizes = {c["case_id"]: c["radiographic_size"] for c in json.load(open(folder / "kits.json"))}
    axial_err, d3_err = [], []
    for case in RADIOLOGY_CASES:
        img = sitk.ReadImage(str(folder / f"{case}.nii.gz"))
        vol = Volume(sitk.GetArrayFromImage(img), img.GetSpacing(), img.GetOrigin(), img.GetDirection())
        can = canonical_reorient(vol).volume(vol)
        tumor = can.array == 2
        axial = max_axial_diameter_mm(tumor, can.spacing_zyx)
        d3 = max_diameter_3d_mm(tumor, can.spacing_zyx)
        assert d3 >= axial
        axial_err.append(axial - 10 * sizes[case])
        d3_err.append(d3 - 10 * sizes[case])
    # Over all 159 available KiTS19 cases with one tumor component, our axial diameter exceeds the
    # radiologists' size by a median of 4.5 mm (median |difference| 5.0 mm, 90th percentile 11.4 mm,
    # correlation 0.98): annotations are drawn generously and the calipers were used on the
    # clinical reading. The 3D diameter is larger still (median +10.5 mm), as expected of an
    # oblique maximum. These ten thick-slice cases: median |difference| 2.5 mm axial, 6.1 mm 3D.
    assert np.median(np.abs(axial_err)) <= 6.0
    assert np.median(np.abs(d3_err)) <= 12.0
    assert max(np.abs(axial_err)) <= 15.0
    sizes_mm = [10 * sizes[c] for c in RADIOLOGY_CASES]
    assert np.corrcoef(np.add(axial_err, sizes_mm), sizes_mm)[0, 1] >= 0.95
