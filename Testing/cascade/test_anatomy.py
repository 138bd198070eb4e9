"""Naming kidneys left and right: the midline, the spine, fields of view that cut the body."""
from __future__ import annotations

import numpy as np
import pytest

from KidneyTumorSegLib.cascade import run_cascade
from KidneyTumorSegLib.config import PostprocessConfig
from KidneyTumorSegLib.engine.reference import ReferencePredictor, reference_predictors
from KidneyTumorSegLib.geometry.volume import Volume
from KidneyTumorSegLib.cascade.anatomy import Midline, assign_sides, midline_x, spine_x

from helpers_cascade import ellipsoid, stages, toy_case


def _one_kidney_and_a_false_one(cut_right_side=False, spine=False, cut_at=0.3):
    """Toy case with only a left kidney, and a 20 mm ball lateral to it that stages 1 and 2 take for kidney
    (as the real CT's spleen when the field of view held one kidney). ``cut_right_side``: the field of view
    also cuts off the body's right part (a reconstruction centred on the left side)."""
    image, label = toy_case(kidneys=("left",))
    if spine:  # a vertebra (700 HU, 28 mm across) on the body's midline, behind the kidneys' centres
        sp = image.spacing_zyx
        extent = np.array(image.shape) * np.array(sp)
        arr = image.array.copy()
        arr[ellipsoid(image.shape, sp, (extent[0] / 2, extent[1] * 0.68, extent[2] / 2), (1e4, 14, 14))] = 700
        image = image.with_array(arr)
    if cut_right_side:
        i0 = int(image.shape[2] * cut_at)
        origin = image.index_to_world([i0, 0, 0])
        image = Volume(image.array[:, :, i0:].copy(), spacing=image.spacing, origin=tuple(origin))
        label = Volume(label.array[:, :, i0:].copy(), spacing=label.spacing, origin=tuple(origin))
    sp = image.spacing_zyx
    extent = np.array(image.shape) * np.array(sp)
    kid = np.argwhere(label.array == 1)
    k, j, i = kid.mean(axis=0)
    false = ellipsoid(image.shape, sp, (k * sp[0], j * sp[1] - 30, min(i * sp[2] + 40, extent[2] - 25)), (20, 20, 20))
    with_false = label.array.copy()
    with_false[false & (with_false == 0)] = 1
    fg = ReferencePredictor(label.with_array(with_false), labels=(1, 2))
    preds = dict(reference_predictors(label, tumor_probability=1.0), roi=fg, kidney=fg)
    return image, label, preds


@pytest.mark.parametrize("cut", [False, True])
def test_two_components_on_one_side_keep_its_name_and_are_flagged(cut):
    image, label, preds = _one_kidney_and_a_false_one(cut_right_side=cut)
    from KidneyTumorSegLib.geometry.records import canonical_reorient

    mid = midline_x(canonical_reorient(image).volume(image))
    assert (mid.cut_right, mid.cut_left) == (cut, False)
    res = run_cascade(image, stages(), preds, PostprocessConfig(candidate_threshold=0.8))
    # the true kidney is the larger one and stays "left" (before: the more medial one was renamed "right")
    assert [k.side for k in res.kidneys] == ["left", "left"]
    big = max(res.kidneys, key=lambda k: k.volume_with_tumor_ml)
    assert big.volume_with_tumor_ml == pytest.approx((label.array > 0).sum() * image.voxel_volume_ml(), rel=0.05)
    assert "two kidney-like components on the patient's left, both listed as left kidneys: one of them is probably " \
           "not kidney (or a crossed ectopic kidney); check both" in res.messages
    assert not np.any(res.sides.array == 2)  # nothing is called right


def test_a_field_of_view_cut_near_the_kidney_takes_the_midline_from_the_spine():
    # the visible body's centre falls on the left kidney itself; the spine says where the midline is
    image, label, preds = _one_kidney_and_a_false_one(cut_right_side=True, spine=True, cut_at=0.45)
    from KidneyTumorSegLib.geometry.records import canonical_reorient

    can = canonical_reorient(image).volume(image)
    mid = midline_x(can)
    kidney_x = image.index_to_world(np.argwhere(label.array == 1).mean(axis=0)[::-1])[0]
    assert mid.cut_right and abs(mid.x - kidney_x) < 10  # the body's centre: useless here
    body_mid = image.index_to_world([image.shape[2] * (0.5 - 0.45) / 0.55, 0, 0])[0]  # the toy body's true midline
    assert abs(spine_x(can, (0, can.shape[0])) - body_mid) < 5  # the vertebra, cut by 3 mm, is still found
    res = run_cascade(image, stages(), preds, PostprocessConfig(candidate_threshold=0.8))
    assert [k.side for k in res.kidneys] == ["left", "left"]
    assert "the field of view cuts the body on the patient's right: left and right are named from the spine" in res.messages
    assert any(m.startswith("two kidney-like components on the patient's left") for m in res.messages)
    # no bone at all (the toy without a spine): the old estimate, and the rename where it is uncertain
    plain = _one_kidney_and_a_false_one(cut_right_side=True)[0]
    assert spine_x(canonical_reorient(plain).volume(plain), (0, plain.shape[0])) is None


def test_the_spine_is_a_column_and_ribs_here_and_there_are_not():

    arr = np.full((12, 100, 100), 40, np.int16)
    arr[:, 60:80, 45:65] = 700  # 20 x 20 mm of bone in every slice, centred at x 54.5 mm
    vol = Volume(arr, spacing=(1.0, 1.0, 3.0))
    assert spine_x(vol, (0, 12)) == pytest.approx(54.5, abs=1.0)  # sampled every 2 mm
    ribs = np.full_like(arr, 40)
    for k in range(12):  # a 4 cm2 piece of bone, somewhere else in every slice
        j, i = 40, (29 * k) % 70
        ribs[k, j:j + 20, i:i + 20] = 700
    assert spine_x(vol.with_array(ribs), (0, 12)) is None


def test_side_names_follow_the_midline_and_where_the_field_of_view_cuts_the_body():

    vol = Volume(np.zeros((10, 10, 200), np.int16), spacing=(1.0, 1.0, 1.0), origin=(-100.0, 0.0, 0.0))

    def comp(x):  # a 10 mm block centred at LPS x
        m = np.zeros(vol.shape, bool)
        m[:, :, x + 95:x + 105] = True
        return m

    def names(xs, midline):
        out, notes = assign_sides([comp(x) for x in xs], vol, midline, 15.0)
        return [side for side, _ in out], notes

    assert names([60, -60], Midline(0.0)) == (["left", "right"], [])
    both, notes = names([40, 90], Midline(0.0))
    assert both == ["left", "left"] and notes[0].startswith("two kidney-like components on the patient's left, both listed")
    # the body cut on the patient's right: the midline lies further right, so "left" is certain
    assert names([40, 90], Midline(0.0, cut_right=True))[0] == ["left", "left"]
    # ... and "right" is not: two "right" ones are named by their position to each other
    renamed, notes = names([-40, -90], Midline(0.0, cut_right=True))
    assert renamed == ["left", "right"]
    assert notes == ["the field of view cuts the body on the patient's right: the midline is uncertain, and the two "
                     "kidneys were named by their position to each other"]
    assert names([40, 90], Midline(0.0, cut_left=True))[0] == ["right", "left"]
    both_cut = names([40, 90], Midline(0.0, cut_left=True, cut_right=True))
    assert both_cut[0] == ["right", "left"] and both_cut[1][0].startswith("the field of view cuts the body on the "
                                                                          "patient's right and left: ")
    # a component across the midline is a horseshoe, unless the body is cut on one side (the estimate is off)
    wide = np.zeros(vol.shape, bool)
    wide[:, :, 60:140] = True  # x from -40 to +40 mm
    assert assign_sides([wide], vol, Midline(0.0), 15.0)[0][0][0] == "horseshoe"
    assert assign_sides([wide], vol, Midline(-5.0, cut_right=True), 15.0)[0][0][0] == "left"
