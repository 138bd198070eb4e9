"""KiTS metrics: Dice regions, surface Dice and HD95 in mm, empty-mask conventions."""
from __future__ import annotations

import math

import numpy as np
import pytest

from KidneyTumorSegLib.evaluation.metrics import case_metrics, dice, hd95_mm, surface_dice

SPACING = (2.5, 0.8, 0.8)  # (k, j, i) mm: thick slices, as in most KiTS19 scans


def slab(shape=(24, 48, 48), z=(8, 11), y=(10, 34), x=(10, 34)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = True
    return m


def kits19_dice(pred: np.ndarray, gt: np.ndarray, thr: int) -> float:
    # the formula of kits19 starter_code/evaluation.py
    p, g = np.greater(pred, thr), np.greater(gt, thr)
    return 2 * np.logical_and(p, g).sum() / (p.sum() + g.sum())


# ---------------------------------------------------------------- Dice
def test_dice_hand_computed():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[0, 0, :4] = True  # 4 voxels
    b[0, 0, 2:] = True  # 2 voxels, both in a
    assert dice(a, b) == pytest.approx(2 * 2 / 6)


def test_dice_empty_conventions():
    e = np.zeros((3, 3, 3), bool)
    f = e.copy()
    f[1, 1, 1] = True
    assert dice(e, e) == 1.0
    assert dice(e, e, empty_dice=0.0) == 0.0
    assert dice(e, f) == 0.0 and dice(f, e) == 0.0


def test_case_metrics_follow_kits19_regions():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 3, size=(10, 12, 14)).astype(np.uint8)
    pred = rng.integers(0, 3, size=(10, 12, 14)).astype(np.uint8)
    m = case_metrics(pred, gt, SPACING)
    assert m["kidney_dice"] == pytest.approx(kits19_dice(pred, gt, 0))
    assert m["tumor_dice"] == pytest.approx(kits19_dice(pred, gt, 1))
    assert m["composite"] == pytest.approx((m["kidney_dice"] + m["tumor_dice"]) / 2)


def test_tumor_called_kidney_counts_for_kidney_only():
    gt = slab().astype(np.uint8)
    gt[9, 20:24, 20:24] = 2
    pred = (gt > 0).astype(np.uint8)  # right kidney region, tumor missed
    m = case_metrics(pred, gt, SPACING)
    assert m["kidney_dice"] == 1.0 and m["kidney_surface_dice"] == pytest.approx(1.0)
    assert m["kidney_hd95_mm"] == 0.0
    assert m["tumor_dice"] == 0.0 and m["tumor_surface_dice"] == 0.0
    assert math.isinf(m["tumor_hd95_mm"])
    assert m["composite"] == 0.5
    vox_ml = np.prod(SPACING) / 1000
    assert m["gt_tumor_ml"] == pytest.approx(16 * vox_ml) and m["pred_tumor_ml"] == 0.0
    assert m["gt_kidney_ml"] == pytest.approx(3 * 24 * 24 * vox_ml) == m["pred_kidney_ml"]


def test_case_metrics_keys_and_shape_check():
    gt = slab().astype(np.uint8)
    keys = list(case_metrics(gt, gt, SPACING))
    assert keys == ["kidney_dice", "tumor_dice", "composite", "kidney_surface_dice", "tumor_surface_dice",
                    "kidney_hd95_mm", "tumor_hd95_mm", "pred_kidney_ml", "gt_kidney_ml", "pred_tumor_ml",
                    "gt_tumor_ml"]
    with pytest.raises(ValueError, match="differs from reference shape"):
        case_metrics(gt[:-1], gt, SPACING)


def test_no_tumor_anywhere_scores_perfect_tumor():
    gt = slab().astype(np.uint8)
    m = case_metrics(gt, gt, SPACING)
    assert m["tumor_dice"] == 1.0 and m["tumor_surface_dice"] == 1.0 and m["tumor_hd95_mm"] == 0.0
    assert case_metrics(gt, gt, SPACING, empty_dice=0.0)["tumor_dice"] == 0.0


# ---------------------------------------------------------------- HD95
@pytest.mark.parametrize("axis,shift,expected_mm", [(0, 2, 5.0), (1, 3, 2.4), (2, 2, 1.6)])
def test_hd95_of_shifted_slab_is_the_shift_in_mm(axis, shift, expected_mm):
    # every boundary voxel of the shifted copy is 0 or exactly `shift` voxels from the other
    # boundary, and far more than 5 % are at the shift, so HD95 = HD = shift * spacing
    a = slab()
    b = np.roll(a, shift, axis=axis)
    assert hd95_mm(a, b, SPACING) == pytest.approx(expected_mm, abs=1e-5)
    assert hd95_mm(b, a, SPACING) == pytest.approx(expected_mm, abs=1e-5)
    assert hd95_mm(a, b, SPACING, percentile=100) == pytest.approx(expected_mm, abs=1e-5)


def test_hd95_empty_conventions():
    e = np.zeros((8, 8, 8), bool)
    f = e.copy()
    f[2:4, 2:4, 2:4] = True
    assert hd95_mm(e, e, SPACING) == 0.0
    assert math.isinf(hd95_mm(e, f, SPACING)) and math.isinf(hd95_mm(f, e, SPACING))
    assert hd95_mm(f, f, SPACING) == 0.0


# ---------------------------------------------------------------- surface Dice
def test_surface_dice_identical_and_translated():
    a = slab()
    b = np.roll(a, 2, axis=0)  # 5 mm up
    assert surface_dice(a, a, SPACING, 0.0) == pytest.approx(1.0)
    # a translation by d moves no surface point farther than d from the other surface
    assert surface_dice(a, b, SPACING, 5.0) == pytest.approx(1.0)
    values = [surface_dice(a, b, SPACING, t) for t in (0.5, 2.0, 4.9)]
    assert 0.0 < values[0] <= values[1] <= values[2] < 1.0
    assert surface_dice(b, a, SPACING, 2.0) == pytest.approx(values[1], abs=1e-6)


def test_surface_dice_close_to_continuous_surfaces():
    # Slab 24x24 voxels (19.2 mm square) by 3 slices (7.5 mm), copy 5 mm higher, tolerance 3 mm.
    # Continuous surfaces: each top face is 2.5 mm from the other's bottom (in), each bottom face
    # 5 mm from anything (out), and of each side wall the part within 3 mm of the other's
    # side wall counts: 5.5 of 7.5 mm. DeepMind's surfels approximate this.
    a = slab()
    b = np.roll(a, 2, axis=0)
    side = 19.2
    top = side * side
    walls = 4 * side * 7.5
    expected = (top + walls * 5.5 / 7.5) / (2 * top + walls)
    assert surface_dice(a, b, SPACING, 3.0) == pytest.approx(expected, abs=0.06)


def test_surface_dice_honours_anisotropic_spacing():
    a = slab()
    b = np.roll(a, 1, axis=0)  # one slice = 2.5 mm
    c = np.roll(a, 1, axis=2)  # one column = 0.8 mm
    assert surface_dice(a, c, SPACING, 1.0) == pytest.approx(1.0)
    assert surface_dice(a, b, SPACING, 1.0) < 0.9


def test_surface_dice_empty_conventions():
    e = np.zeros((8, 8, 8), bool)
    f = e.copy()
    f[2:4, 2:4, 2:4] = True
    assert surface_dice(e, e, SPACING) == 1.0
    assert surface_dice(e, f, SPACING) == 0.0 and surface_dice(f, e, SPACING) == 0.0


def test_cropping_does_not_change_results_at_array_edges():
    # the same pair of masks, once touching the array's edges and once well inside a larger array
    tight = np.zeros((5, 20, 20), bool)
    tight[:3, :12, 4:] = True
    other = np.roll(tight, 2, axis=0)
    other[:, :, :3] = True
    big_a = np.zeros((15, 40, 40), bool)
    big_b = big_a.copy()
    big_a[5:10, 10:30, 10:30] = tight
    big_b[5:10, 10:30, 10:30] = other
    for f in (lambda p, q: hd95_mm(p, q, SPACING), lambda p, q: surface_dice(p, q, SPACING, 1.0)):
        assert f(tight, other) == pytest.approx(f(big_a, big_b), abs=1e-6)
