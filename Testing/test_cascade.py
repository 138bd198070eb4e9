"""The cascade's logic, driven by exact predictors built from reference labels."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from KidneyTumorSegLib.cascade import RoiWorld, run_cascade
from KidneyTumorSegLib.config import NetworkConfig, PostprocessConfig, StageConfig
from KidneyTumorSegLib.findings.findings import apply_candidate_choice, segment_map
from KidneyTumorSegLib.geometry.records import canonical_reorient
from KidneyTumorSegLib.evaluation.metrics import case_metrics
from KidneyTumorSegLib.engine.reference import FalseCandidate, ReferencePredictor, reference_predictors
from KidneyTumorSegLib.geometry.volume import Volume

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def stages(fine=(2.5, 1.6, 1.6), tumor=(2.5, 1.0, 1.0), coarse=(3.4, 3.4, 3.4), keep=2):
    return {
        "roi": StageConfig("coarse", "roi", spacing=coarse, margin_mm=15.0, keep_components=keep),
        "kidney": StageConfig("kidney", "kidney", spacing=fine, keep_components=keep),
        "tumor": StageConfig("tumor", "tumor", spacing=tumor, mask_outside=True, margin_mm=10.0),
    }


def _ellipsoid(shape, spacing_zyx, centre_mm, radii_mm):
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    d = ((k * spacing_zyx[0] - centre_mm[0]) / radii_mm[0]) ** 2
    d = d + ((j * spacing_zyx[1] - centre_mm[1]) / radii_mm[1]) ** 2
    d = d + ((i * spacing_zyx[2] - centre_mm[2]) / radii_mm[2]) ** 2
    return d <= 1.0


def toy_case(shape=(40, 120, 160), spacing_zyx=(3.0, 1.5, 1.5), kidneys=("right", "left"), tumors=True, direction=None):
    """Body ellipse with two kidney ellipsoids and tumors; identity direction unless given."""
    extent = np.array(shape) * np.array(spacing_zyx)
    img = np.full(shape, -1000, np.int16)
    body = _ellipsoid(shape, spacing_zyx, extent / 2, (extent[0], extent[1] * 0.45, extent[2] * 0.45))
    img[body] = 40
    lab = np.zeros(shape, np.uint8)
    cz, cy = extent[0] / 2, extent[1] * 0.55
    xs = {"right": extent[2] * 0.3, "left": extent[2] * 0.7}  # LPS: +x (higher i) is the patient's left
    for side in kidneys:
        lab[_ellipsoid(shape, spacing_zyx, (cz, cy, xs[side]), (30, 22, 18))] = 1
    if tumors:
        if "left" in kidneys:
            lab[_ellipsoid(shape, spacing_zyx, (cz + 12, cy, xs["left"] + 12), (12, 12, 12))] = 2
        if "right" in kidneys:
            lab[_ellipsoid(shape, spacing_zyx, (cz - 15, cy + 5, xs["right"] - 5), (8, 8, 8))] = 2
    sp = (spacing_zyx[2], spacing_zyx[1], spacing_zyx[0])
    image = Volume(img, spacing=sp, origin=(-100.0, -80.0, 300.0))
    label = Volume(lab, spacing=sp, origin=(-100.0, -80.0, 300.0))
    if direction is not None:
        # store the same anatomy with another axis order and direction (as KiTS19 does)
        image, label = _restore(image, direction), _restore(label, direction)
    return image, label


def _restore(vol: Volume, direction) -> Volume:
    """The same world content stored in an array whose direction is ``direction`` (signed permutation)."""
    target = Volume(np.zeros((1, 1, 1), vol.array.dtype), direction=tuple(np.asarray(direction).ravel()))
    rec = canonical_reorient(target)
    # build the stored array so that its canonical form equals vol
    inv_shape = tuple(np.array(vol.shape)[np.argsort(rec.perm)])
    rec_full = type(rec)(rec.perm, rec.flip, inv_shape)
    stored = rec_full.invert(vol.array)
    stored_vol = Volume(stored, spacing=(1, 1, 1), direction=target.direction)
    probe = rec_full.volume(stored_vol)
    # fix spacing/origin so that the canonical view has vol's geometry
    sp_perm = np.zeros(3)
    for n in range(3):
        sp_perm[2 - rec.perm[n]] = vol.spacing[2 - n]
    stored_vol = Volume(stored, spacing=tuple(sp_perm), direction=target.direction)
    probe = rec_full.volume(stored_vol)
    shift = np.asarray(vol.origin) - np.asarray(probe.origin)
    out = Volume(stored, spacing=tuple(sp_perm), origin=tuple(np.asarray(stored_vol.origin) + shift), direction=target.direction)
    assert np.allclose(rec_full.volume(out).origin, vol.origin)
    return out


def _dice(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def test_native_spacing_reproduces_reference_exactly():
    image, label = toy_case()
    sp = image.spacing_zyx
    st = stages(fine=sp, tumor=sp)
    res = run_cascade(image, st, reference_predictors(label, tumor_probability=1.0))
    assert res.status == "ok" and res.plausibility["reasons"] == []
    assert res.label.same_grid(image)
    assert np.array_equal(res.label.array, label.array)
    assert sorted(k.side for k in res.kidneys) == ["left", "right"]
    assert [c.kept for c in res.tumors] == [True, True]


@pytest.mark.parametrize("direction", [
    np.eye(3),
    np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]], float),  # KiTS19: slices on the first array axis
    np.diag([-1.0, -1.0, 1.0]),  # RAS-stored axes
])
def test_resampled_stages_match_reference_within_resampling_error(direction):
    image, label = toy_case(direction=direction)
    res = run_cascade(image, stages(), reference_predictors(label, tumor_probability=1.0))
    assert res.label.same_grid(image)
    m = case_metrics(res.label.array, label.array, image.spacing_zyx)
    # resampling to 1.6 mm and back moves boundaries by well under a voxel
    assert m["kidney_dice"] > 0.98
    assert m["tumor_dice"] > 0.95
    left = [k for k in res.kidneys if k.side == "left"][0]
    # the left kidney is at higher LPS x
    assert left.centre_lps_mm[0] > [k for k in res.kidneys if k.side == "right"][0].centre_lps_mm[0]


def test_stage4_keeps_confident_and_rejects_weak_candidates():
    image, label = toy_case()
    left_kidney = np.argwhere(label.array == 1)
    # a false candidate inside the left kidney, reported with probability 0.6
    k, j, i = left_kidney[len(left_kidney) // 3]
    centre = tuple(image.index_to_world([i, j, k]))
    preds = reference_predictors(label, tumor_probability=1.0, extra=[FalseCandidate(centre, 5.0, 0.6)])
    res = run_cascade(image, stages(), preds, PostprocessConfig(candidate_threshold=0.8))
    kept = [c for c in res.tumors if c.kept]
    rejected = [c for c in res.tumors if not c.kept]
    assert len(kept) == 2 and len(rejected) == 1
    assert rejected[0].mean_probability == pytest.approx(0.6, abs=0.05)
    assert np.all(res.label.array[res.candidates.array == rejected[0].id] != 2)
    # a lower threshold keeps it
    res2 = run_cascade(image, stages(), preds, PostprocessConfig(candidate_threshold=0.5))
    assert sum(c.kept for c in res2.tumors) == 3
    # the annotator's choice: add the rejected candidate, drop a kept one
    lab = apply_candidate_choice(res, {rejected[0].id, kept[0].id})
    assert np.all(lab[res.candidates.array == rejected[0].id] == 2)
    assert not np.any(lab[res.candidates.array == kept[1].id] == 2)


def test_stage4_rejects_a_water_density_candidate_as_a_probable_cyst():
    image, label = toy_case()  # body, kidneys and tumors at 40 HU
    left_kidney = np.argwhere(label.array == 1)
    k, j, i = left_kidney[len(left_kidney) // 3]
    centre = tuple(image.index_to_world([i, j, k]))
    # a confident false candidate (0.95) at water density: a simple cyst in a kidney
    preds = reference_predictors(label, tumor_probability=1.0, extra=[FalseCandidate(centre, 5.0, 0.95)])
    arr = image.array.copy()
    cyst = _ellipsoid(arr.shape, image.spacing_zyx, (k * image.spacing_zyx[0], j * image.spacing_zyx[1],
                                                     i * image.spacing_zyx[2]), (7.0, 7.0, 7.0))
    arr[cyst & (label.array == 1)] = 8
    water = image.with_array(arr)
    res = run_cascade(water, stages(), preds, PostprocessConfig(candidate_threshold=0.8, cyst_max_hu=20.0))
    rejected = [c for c in res.tumors if not c.kept]
    assert sum(c.kept for c in res.tumors) == 2 and len(rejected) == 1
    assert rejected[0].core_hu == pytest.approx(8.0, abs=1.0)
    assert rejected[0].rejected_because == "water attenuation (core 8 HU <= 20): probable simple cyst"
    assert all(c.rejected_because == "" and c.core_hu == pytest.approx(40.0, abs=1.0) for c in res.tumors if c.kept)
    assert np.all(res.label.array[res.candidates.array == rejected[0].id] == 1)  # left as kidney
    assert f"1 candidate(s) of water attenuation (core <= 20 HU) rejected as probable simple cysts: {rejected[0].side} " \
           f"{rejected[0].diameter_3d_mm:.0f} mm, 8 HU" in res.messages
    # the rule off (bundles written before it): the same candidate is a tumor
    off = run_cascade(water, stages(), preds, PostprocessConfig(candidate_threshold=0.8))
    assert sum(c.kept for c in off.tumors) == 3
    # enhancing tissue with the same probability stays a tumor with the rule on
    plain = run_cascade(image, stages(), preds, PostprocessConfig(candidate_threshold=0.8, cyst_max_hu=20.0))
    assert sum(c.kept for c in plain.tumors) == 3



def test_stage4_rejects_tiny_candidates_and_does_not_list_specks():
    # four confident false spots in the left kidney, of 0.01, 0.02, 0.08 and 0.27 mL on this grid
    image, label = toy_case()
    vox = np.argwhere(label.array == 1)
    left = vox[vox[:, 2] > label.shape[2] // 2]
    spots = [left[len(left) * q // 10] for q in (1, 3, 6, 8)]
    extra = [FalseCandidate(tuple(image.index_to_world([i, j, k])), r, 1.0)
             for (k, j, i), r in zip(spots, (1.5, 2.0, 2.8, 4.0))]
    preds = reference_predictors(label, tumor_probability=1.0, extra=extra)
    # no floors (bundles written before them): every spot is a listed candidate, three of them kept
    off = run_cascade(image, stages(), preds, PostprocessConfig(candidate_threshold=0.8))
    vols = sorted(c.volume_ml for c in off.tumors)
    assert len(vols) == 6 and vols[0] < vols[1] < 0.05 < vols[2] < 0.1 < vols[3] < 1.0 and off.specks_not_listed == 0
    assert sum(c.kept for c in off.tumors) == 5
    post = PostprocessConfig(candidate_threshold=0.8, min_candidate_ml=0.1, min_listed_ml=0.05)
    res = run_cascade(image, stages(), preds, post)
    assert sorted(c.volume_ml for c in res.tumors) == vols[2:]
    small = [c for c in res.tumors if not c.kept]
    assert len(small) == 1 and small[0].volume_ml == vols[2]
    assert small[0].rejected_because == f"too small ({vols[2]:.2f} mL < 0.1 mL)"
    assert sum(c.kept for c in res.tumors) == 3  # the two true tumors and the 0.27 mL spot
    assert res.specks_not_listed == 2 and res.report()["specks_not_listed"] == 2
    assert "2 speck(s) of tumor probability under 0.05 mL not listed as candidates" in res.messages
    assert f"1 candidate(s) under 0.1 mL rejected as too small: left {vols[2]:.2f} mL" in res.messages
    assert not any("rejected below the threshold" in m for m in res.messages)
    # the candidate map holds exactly the listed candidates, numbered 1..n
    assert sorted(np.unique(res.candidates.array))[1:] == sorted(c.id for c in res.tumors) == [1, 2, 3, 4]
    # specks and the small candidate stay kidney; everything else is as without the floors
    specks = [c for c in off.tumors if c.volume_ml < 0.05]
    was = np.isin(off.candidates.array, [c.id for c in specks])
    assert was.sum() > 0 and np.all(res.label.array[was] == 1) and np.all(res.candidates.array[was] == 0)
    in_small = res.candidates.array == small[0].id
    assert np.all(res.label.array[in_small] == 1) and np.all(off.label.array[in_small] == 2)
    same = ~(was | in_small)
    np.testing.assert_array_equal(res.label.array[same], off.label.array[same])
    # the annotator can add the small one back
    added = apply_candidate_choice(res, {c.id for c in res.tumors})
    assert np.all(added[in_small] == 2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(min_candidate_ml=-1.0), "min_candidate_ml must be from 0 to 1000 mL, got -1.0"),
    (dict(min_candidate_ml=0.1, min_listed_ml=0.2),
     "min_listed_ml must be from 0 to min_candidate_ml (0.1 mL), got 0.2: a candidate stage 4 could keep must be listed"),
    (dict(min_listed_ml=-0.01),
     "min_listed_ml must be from 0 to min_candidate_ml (0 mL), got -0.01: a candidate stage 4 could keep must be listed"),
])
def test_size_floors_are_checked(kwargs, message):
    with pytest.raises(ValueError) as e:
        PostprocessConfig(**kwargs)
    assert str(e.value) == message

def test_one_kidney():
    image, label = toy_case(kidneys=("left",))
    res = run_cascade(image, stages(), reference_predictors(label, tumor_probability=1.0))
    assert [k.side for k in res.kidneys] == ["left"]
    assert any("one kidney found (left)" in m for m in res.messages)
    seg = segment_map(res.label.array, res.sides.array)
    assert set(np.unique(seg)) == {0, 1, 3}



def _one_kidney_and_a_false_one(cut_right_side=False, spine=False, cut_at=0.3):
    """Toy case with only a left kidney, and a 20 mm ball lateral to it that stages 1 and 2 take for kidney
    (as the real CT's spleen when the field of view held one kidney). ``cut_right_side``: the field of view
    also cuts off the body's right part (a reconstruction centred on the left side)."""
    image, label = toy_case(kidneys=("left",))
    if spine:  # a vertebra (700 HU, 28 mm across) on the body's midline, behind the kidneys' centres
        sp = image.spacing_zyx
        extent = np.array(image.shape) * np.array(sp)
        arr = image.array.copy()
        arr[_ellipsoid(image.shape, sp, (extent[0] / 2, extent[1] * 0.68, extent[2] / 2), (1e4, 14, 14))] = 700
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
    false = _ellipsoid(image.shape, sp, (k * sp[0], j * sp[1] - 30, min(i * sp[2] + 40, extent[2] - 25)), (20, 20, 20))
    with_false = label.array.copy()
    with_false[false & (with_false == 0)] = 1
    fg = ReferencePredictor(label.with_array(with_false), labels=(1, 2))
    preds = dict(reference_predictors(label, tumor_probability=1.0), roi=fg, kidney=fg)
    return image, label, preds


@pytest.mark.parametrize("cut", [False, True])
def test_two_components_on_one_side_keep_its_name_and_are_flagged(cut):
    image, label, preds = _one_kidney_and_a_false_one(cut_right_side=cut)
    from KidneyTumorSegLib.cascade.anatomy import midline_x as _midline_x
    from KidneyTumorSegLib.geometry.records import canonical_reorient

    mid = _midline_x(canonical_reorient(image).volume(image))
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
    from KidneyTumorSegLib.cascade.anatomy import midline_x as _midline_x, spine_x as _spine_x
    from KidneyTumorSegLib.geometry.records import canonical_reorient

    can = canonical_reorient(image).volume(image)
    mid = _midline_x(can)
    kidney_x = image.index_to_world(np.argwhere(label.array == 1).mean(axis=0)[::-1])[0]
    assert mid.cut_right and abs(mid.x - kidney_x) < 10  # the body's centre: useless here
    body_mid = image.index_to_world([image.shape[2] * (0.5 - 0.45) / 0.55, 0, 0])[0]  # the toy body's true midline
    assert abs(_spine_x(can, (0, can.shape[0])) - body_mid) < 5  # the vertebra, cut by 3 mm, is still found
    res = run_cascade(image, stages(), preds, PostprocessConfig(candidate_threshold=0.8))
    assert [k.side for k in res.kidneys] == ["left", "left"]
    assert "the field of view cuts the body on the patient's right: left and right are named from the spine" in res.messages
    assert any(m.startswith("two kidney-like components on the patient's left") for m in res.messages)
    # no bone at all (the toy without a spine): the old estimate, and the rename where it is uncertain
    plain = _one_kidney_and_a_false_one(cut_right_side=True)[0]
    assert _spine_x(canonical_reorient(plain).volume(plain), (0, plain.shape[0])) is None


def test_the_spine_is_a_column_and_ribs_here_and_there_are_not():
    from KidneyTumorSegLib.cascade.anatomy import spine_x as _spine_x

    arr = np.full((12, 100, 100), 40, np.int16)
    arr[:, 60:80, 45:65] = 700  # 20 x 20 mm of bone in every slice, centred at x 54.5 mm
    vol = Volume(arr, spacing=(1.0, 1.0, 3.0))
    assert _spine_x(vol, (0, 12)) == pytest.approx(54.5, abs=1.0)  # sampled every 2 mm
    ribs = np.full_like(arr, 40)
    for k in range(12):  # a 4 cm2 piece of bone, somewhere else in every slice
        j, i = 40, (29 * k) % 70
        ribs[k, j:j + 20, i:i + 20] = 700
    assert _spine_x(vol.with_array(ribs), (0, 12)) is None


def test_side_names_follow_the_midline_and_where_the_field_of_view_cuts_the_body():
    from KidneyTumorSegLib.cascade.anatomy import Midline, assign_sides as _assign_sides

    vol = Volume(np.zeros((10, 10, 200), np.int16), spacing=(1.0, 1.0, 1.0), origin=(-100.0, 0.0, 0.0))

    def comp(x):  # a 10 mm block centred at LPS x
        m = np.zeros(vol.shape, bool)
        m[:, :, x + 95:x + 105] = True
        return m

    def names(xs, midline):
        out, notes = _assign_sides([comp(x) for x in xs], vol, midline, 15.0)
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
    assert _assign_sides([wide], vol, Midline(0.0), 15.0)[0][0][0] == "horseshoe"
    assert _assign_sides([wide], vol, Midline(-5.0, cut_right=True), 15.0)[0][0][0] == "left"

def test_horseshoe_kidney_is_one_component_split_in_segments():
    image, label = toy_case(kidneys=(), tumors=False)
    sp = image.spacing_zyx
    extent = np.array(image.shape) * np.array(sp)
    lab = np.zeros(image.shape, np.uint8)
    lab[_ellipsoid(image.shape, sp, (extent[0] / 2, extent[1] * 0.55, extent[2] / 2), (25, 15, 80))] = 1
    label = label.with_array(lab)
    res = run_cascade(image, stages(), reference_predictors(label))
    assert [k.side for k in res.kidneys] == ["horseshoe"]
    assert any("horseshoe" in m for m in res.messages)
    seg = segment_map(res.label.array, res.sides.array)
    assert (seg == 1).sum() > 0 and (seg == 2).sum() > 0


def test_kidney_at_edge_of_field_of_view():
    image, label = toy_case()
    # cut the scan through the left kidney
    cut = 50
    image = image.with_array(image.array[:, :, :-cut].copy())
    label = label.with_array(label.array[:, :, :-cut].copy())
    assert label.array[..., -1].any()
    res = run_cascade(image, stages(), reference_predictors(label, tumor_probability=1.0))
    left = [k for k in res.kidneys if k.side == "left"][0]
    assert left.touches_fov_edge
    assert any("edge of the scan" in m for m in res.messages)
    assert _dice(res.label.array > 0, label.array > 0) > 0.98


def test_no_kidney_gives_empty_result_and_message():
    image, label = toy_case(kidneys=(), tumors=False)
    res = run_cascade(image, stages(), reference_predictors(label))
    assert res.status == "no_kidney"
    assert not res.label.array.any()
    assert "no kidney found" in res.messages[0]


def test_user_roi_replaces_stage_one():
    image, label = toy_case()
    lo = image.index_to_world([0, 0, 0])
    hi = image.index_to_world(np.array(image.shape[::-1]) - 1)
    # a box around the left half only (higher x): the right kidney is left out
    mid = (lo[0] + hi[0]) / 2
    roi = RoiWorld((mid, lo[1], lo[2]), (hi[0], hi[1], hi[2]))

    class Fail:
        def predict(self, vol, progress=None):
            raise AssertionError("stage 1 must not run when a ROI is given")

    preds = dict(reference_predictors(label, tumor_probability=1.0), roi=Fail())
    res = run_cascade(image, stages(), preds, roi=roi)
    assert [k.side for k in res.kidneys] == ["left"]


@pytest.mark.parametrize("case", ["case_00061", "case_00110", pytest.param("case_00000", marks=pytest.mark.slow)])
def test_real_kits19_label_geometry(case):
    path = SHARED / "kits19-labels" / f"{case}.nii.gz"
    if not path.exists():
        pytest.skip("../shared/data/kits19-labels is absent (only in the development workspace)")
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    label = Volume(sitk.GetArrayFromImage(img), img.GetSpacing(), img.GetOrigin(), img.GetDirection())
    image = label.with_array(np.where(label.array > 0, 150, 0).astype(np.int16))
    res = run_cascade(image, stages(), reference_predictors(label, tumor_probability=1.0))
    assert res.label.same_grid(label)
    m = case_metrics(res.label.array, label.array, label.spacing_zyx)
    assert m["kidney_dice"] > 0.97, m
    assert m["tumor_dice"] > 0.93, m


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_phantoms_with_default_spacings_reproduce_reference(seed):
    from KidneyTumorSegLib.phantom import make_phantom
    from KidneyTumorSegLib.presets import default_stages

    ph = make_phantom(seed=seed, shape=(48, 192, 192), spacing=(1.8, 1.8, 4.0), n_tumors=2)
    st = {s.role: s for s in default_stages()}
    res = run_cascade(ph.image, st, reference_predictors(ph.label, tumor_probability=1.0))
    assert res.label.same_grid(ph.image)
    # seed 12's reference itself is unusual: a 164 mL tumor leaves its kidney 39 mL of tissue, less than
    # 726 of the 730 real KiTS kidneys have, and plausibility says so (nothing else is flagged)
    flagged = {12: ["the right kidney has 39 mL of kidney tissue besides its tumors; real kidneys have 43-660 mL"]}
    assert res.plausibility["reasons"] == flagged.get(seed, [])
    assert res.status == ("implausible" if seed in flagged else "ok")
    m = case_metrics(res.label.array, ph.label.array, ph.image.spacing_zyx)
    # the only differences are resampling to the stage grids and back
    assert m["kidney_dice"] > 0.97, m
    assert m["tumor_dice"] > 0.9, m
    n_ref = int(len(ph.info["tumors"])) if "tumors" in ph.info else None
    if n_ref is not None:
        assert sum(c.kept for c in res.tumors) == n_ref


class _KidneyAndTumorPredictor:
    """A three-class kidney stage (background, kidney, tumor) that is unsure which class a tumor voxel is:
    0.4 kidney, 0.4 tumor, 0.2 background; neither class alone passes 0.5, their sum does."""

    def __init__(self, label):
        self.kidney = ReferencePredictor(label, labels=(1,))
        self.tumor = ReferencePredictor(label, labels=(2,))

    def predict(self, vol, progress=None):
        k, t = self.kidney.predict(vol)[1], self.tumor.predict(vol)[1]
        p1, p2 = k + 0.4 * t, 0.4 * t
        return np.stack([1.0 - p1 - p2, p1, p2]).astype(np.float32)


def test_three_class_kidney_stage_passes_kidney_plus_tumor_to_stage_3():
    image, label = toy_case()
    sp = image.spacing_zyx
    preds = dict(reference_predictors(label, tumor_probability=1.0), kidney=_KidneyAndTumorPredictor(label))
    three = dict(labels=("background", "kidney", "tumor"), network=NetworkConfig(out_channels=3))
    st = stages(fine=sp, tumor=sp)
    st["kidney"] = StageConfig("kidney", "kidney", spacing=sp, foreground_channels=(1, 2), **three)
    res = run_cascade(image, st, preds)
    assert np.array_equal(res.label.array, label.array)
    # the kidney channel alone leaves the tumors out of the kidney masks, and stage 3 cannot find them there
    st["kidney"] = StageConfig("kidney", "kidney", spacing=sp, foreground_channel=1, **three)
    res1 = run_cascade(image, st, preds)
    assert (res1.label.array == 2).sum() < 0.5 * (label.array == 2).sum()


def test_stage_foreground_channels_are_checked():
    three = NetworkConfig(out_channels=3)
    probs = np.stack([np.full((2, 2, 2), v, np.float32) for v in (0.2, 0.3, 0.5)])
    st = StageConfig("k", "kidney", network=three, labels=("background", "kidney", "tumor"), foreground_channels=(1, 2))
    np.testing.assert_allclose(st.foreground(probs), 0.8)
    np.testing.assert_array_equal(StageConfig("k", "kidney").foreground(probs[:2]), probs[1])
    with pytest.raises(ValueError, match=r"stage 'k': foreground channel 3 is not one of the network's 3 output "
                                         r"channels other than background \(0\)"):
        StageConfig("k", "kidney", network=three, labels=("background", "kidney", "tumor"), foreground_channels=(1, 3))
    with pytest.raises(ValueError, match=r"stage 'k': 2 labels \('background', 'foreground'\) for 3 output channels"):
        StageConfig("k", "kidney", network=three, foreground_channels=(1, 2))


def _exophytic_case():
    """Two kidneys; the left one with a 14 mm tumor centred on its lateral surface, half of it outside."""
    image, label = toy_case(tumors=False)
    sp = image.spacing_zyx
    extent = np.array(image.shape) * np.array(sp)
    lab = label.array.copy()
    lab[_ellipsoid(image.shape, sp, (extent[0] / 2, extent[1] * 0.55, extent[2] * 0.7 + 18), (14, 14, 14))] = 2
    return image, label.with_array(lab)


def _exophytic_setup(extra=lambda image: []):
    """The exophytic case with stage 2 seeing the kidney only and stage 3 its 3 mm rim, at the scan's spacing.

    Returns ``(image, label, stages, predictors)``; ``extra(image)``: false candidates for stage 3's reference.
    """
    image, label = _exophytic_case()
    sp = image.spacing_zyx
    preds = dict(reference_predictors(label, extra=list(extra(image))), kidney=ReferencePredictor(label, labels=(1,)))
    st = stages(fine=sp, tumor=sp)
    st["tumor"] = StageConfig("tumor", "tumor", spacing=sp, mask_outside=True, margin_mm=10.0, mask_dilation_mm=3.0)
    return image, label, st, preds


def test_growth_passes_recover_a_tumor_stage_2_left_out():
    # stage 2 sees the kidney only, so the tumor's outer half is beyond stage 3's 3 mm rim; a false
    # candidate 4.5 to 10.5 mm outside the right kidney, where no tumor was kept, must stay unseen
    def far(image):
        return [FalseCandidate(tuple(image.index_to_world([int(image.shape[2] * 0.3) - 17, int(image.shape[1] * 0.55),
                                                            image.shape[0] // 2])), 3.0, 0.95)]
    image, label, st, preds = _exophytic_setup(extra=far)
    ref_tumor = label.array == 2
    one = run_cascade(image, st, preds, post=PostprocessConfig())
    assert _dice(one.label.array == 2, ref_tumor) < 0.8
    grown = run_cascade(image, st, preds, post=PostprocessConfig(tumor_growth_passes=3, tumor_growth_mm=13.0))
    assert _dice(grown.label.array == 2, ref_tumor) > 0.97
    # the kidney stays stage 2's, the tumor is one kept candidate of the reference's size, nothing else is kept
    np.testing.assert_array_equal(grown.label.array == 1, label.array == 1)
    kept = [c for c in grown.tumors if c.kept]
    assert [c.side for c in kept] == ["left"]
    assert kept[0].volume_ml == pytest.approx(ref_tumor.sum() * image.voxel_volume_ml(), rel=0.05)
    assert grown.kidneys[[k.side for k in grown.kidneys].index("left")].volume_with_tumor_ml > \
        one.kidneys[[k.side for k in one.kidneys].index("left")].volume_with_tumor_ml
    # a rim that wide around every kidney would have let the false candidate in
    wide = dict(st, tumor=replace(st["tumor"], mask_dilation_mm=13.0, margin_mm=15.0))
    assert "right" in [c.side for c in run_cascade(image, wide, preds).tumors if c.kept]


def test_growth_settings_are_checked():
    with pytest.raises(ValueError, match="tumor_growth_passes must be an integer from 0 to 8, got 9"):
        PostprocessConfig(tumor_growth_passes=9)
    with pytest.raises(ValueError, match="tumor_growth_mm must be from 0 to 50 mm, got nan"):
        PostprocessConfig(tumor_growth_mm=float("nan"))


class _ForgetsWithMoreContext:
    """A stage 3 that finds nothing in any crop larger than ``limit`` voxels (a wider view changed its mind)."""

    def __init__(self, inner, limit=None):
        self.inner, self.limit, self.sizes = inner, limit, []

    def predict(self, vol, progress=None):
        self.sizes.append(int(np.prod(vol.shape)))
        p = self.inner.predict(vol)
        if self.limit is not None and self.sizes[-1] > self.limit:
            p = np.stack([np.ones(vol.shape, np.float32), np.zeros(vol.shape, np.float32)])
        return p


def test_a_growth_pass_only_decides_the_voxels_it_adds():
    image, _, st, preds = _exophytic_setup()
    preds["tumor"] = probe = _ForgetsWithMoreContext(preds["tumor"])
    one = run_cascade(image, st, preds)
    assert (one.label.array == 2).any()
    preds["tumor"] = forgetful = _ForgetsWithMoreContext(probe.inner, limit=max(probe.sizes))
    grown = run_cascade(image, st, preds, post=PostprocessConfig(tumor_growth_passes=2, tumor_growth_mm=13.0))
    assert len(forgetful.sizes) == 3  # two kidneys, and one growth pass for the left one's tumor
    np.testing.assert_array_equal(grown.label.array, one.label.array)


def test_kidney_contact_is_the_fraction_of_surface_area_on_the_kidney():
    from KidneyTumorSegLib.cascade.candidates import kidney_contact as _kidney_contact

    cand = np.zeros((6, 6, 6), bool)
    cand[1:5, 1:5, 1:5] = True
    kidney = np.zeros_like(cand)
    kidney[0, 1:5, 1:5] = True  # under one of its six faces
    assert _kidney_contact(cand, kidney, (1.0, 1.0, 1.0)) == pytest.approx(1 / 6)
    # by area, not by voxel faces: with 3 mm slices the top and bottom faces are 1/14 of the surface
    assert _kidney_contact(cand, kidney, (3.0, 1.0, 1.0)) == pytest.approx(1 / 14)
    # inside the kidney: all of it; kidney voxels under the candidate do not count; the array's edge is not kidney
    assert _kidney_contact(cand, np.ones_like(cand), (3.0, 1.0, 1.0)) == pytest.approx(1.0)
    assert _kidney_contact(np.ones_like(cand), np.ones_like(cand), (1.0, 1.0, 1.0)) == 0.0
    assert _kidney_contact(np.zeros_like(cand), kidney, (1.0, 1.0, 1.0)) == 0.0


def _bowel_beside_kidney_case():
    """Toy case whose right kidney has, on its lateral side, an 8 mm loop that stage 2 takes for kidney
    (it overlaps the kidney by 2 mm) and stage 3 for a confident tumor (as bowel beside the real CT's kidney)."""
    image, label = toy_case()
    sp = image.spacing_zyx
    extent = np.array(image.shape) * np.array(sp)
    centre_mm = (extent[0] / 2, extent[1] * 0.55, extent[2] * 0.3 - 18 - 6)
    loop = _ellipsoid(image.shape, sp, centre_mm, (8, 8, 8))
    with_loop = label.array.copy()
    with_loop[loop & (with_loop == 0)] = 1
    centre = tuple(image.index_to_world([centre_mm[2] / sp[2], centre_mm[1] / sp[1], centre_mm[0] / sp[0]]))
    preds = dict(reference_predictors(label, tumor_probability=1.0, extra=[FalseCandidate(centre, 8.0, 0.95)]),
                 kidney=ReferencePredictor(label.with_array(with_loop), labels=(1, 2)))
    return image, label, preds


def test_stage4_rejects_a_candidate_that_barely_touches_the_kidney():
    image, label, preds = _bowel_beside_kidney_case()
    res = run_cascade(image, stages(), preds, PostprocessConfig(candidate_threshold=0.8, min_kidney_contact=0.3))
    rejected = [c for c in res.tumors if not c.kept]
    assert [c.side for c in rejected] == ["right"] and sum(c.kept for c in res.tumors) == 2
    loop = rejected[0]
    assert 0.05 < loop.kidney_contact < 0.25  # a 2 mm cap of an 8 mm sphere: about 1/8 of its surface
    assert all(c.kidney_contact > 0.5 for c in res.tumors if c.kept)
    pct = round(100 * loop.kidney_contact)
    assert loop.rejected_because == f"borders the kidney over {pct} % of its surface (< 30 %): probably outside the kidney"
    assert f"1 candidate(s) bordering the kidney over less than 30 % of their surface rejected as probably outside the " \
           f"kidney: right {loop.diameter_3d_mm:.0f} mm, {pct} %" in res.messages
    assert not any("rejected below the threshold" in m for m in res.messages)
    assert _dice(res.label.array == 2, label.array == 2) > 0.9  # within resampling error
    # outside the kidney: background, and no part of the kidney's volume or side map
    in_loop = res.candidates.array == loop.id
    assert in_loop.sum() > 100 and np.all(res.label.array[in_loop] == 0) and np.all(res.sides.array[in_loop] == 0)
    added = apply_candidate_choice(res, {c.id for c in res.tumors if c.kept} | {loop.id})  # the annotator adds it back
    assert np.all(added[in_loop] == 2) and np.array_equal(added[~in_loop], res.label.array[~in_loop])
    right = next(k for k in res.kidneys if k.side == "right")
    assert right.volume_with_tumor_ml == pytest.approx(
        np.count_nonzero((res.label.array > 0) & (res.sides.array == 2)) * image.voxel_volume_ml(), abs=0.01)
    # the rule off (bundles written before it): the loop is a tumor
    off = run_cascade(image, stages(), preds, PostprocessConfig(candidate_threshold=0.8))
    assert sum(c.kept for c in off.tumors) == 3
    assert [c.kidney_contact for c in off.tumors if c.id == loop.id] == [loop.kidney_contact]
    assert _dice(off.label.array == 2, label.array == 2) < _dice(res.label.array == 2, label.array == 2) - 0.02
    assert off.report()["tumor_candidates"][0]["kidney_contact"] is not None


def test_kidney_contact_is_judged_before_growth():
    # an exophytic tumor grows past stage 2's kidney: its grown surface borders the kidney over less than
    # its first pass's did, and it must stay a tumor
    image, label, st, preds = _exophytic_setup()
    post = PostprocessConfig(tumor_growth_passes=3, tumor_growth_mm=13.0, min_kidney_contact=0.45)
    grown = run_cascade(image, st, preds, post=post)
    assert _dice(grown.label.array == 2, label.array == 2) > 0.97
    from KidneyTumorSegLib.cascade.candidates import kidney_contact as _kidney_contact
    whole = _kidney_contact(grown.label.array == 2, grown.label.array == 1, image.spacing_zyx)
    kept = [c for c in grown.tumors if c.kept]
    assert len(kept) == 1 and whole < 0.45 <= kept[0].kidney_contact


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_kidney_contact_setting_is_checked(value):
    with pytest.raises(ValueError) as e:
        PostprocessConfig(min_kidney_contact=value)
    assert str(e.value) == f"min_kidney_contact must be a fraction from 0 to 1, got {value!r}"
