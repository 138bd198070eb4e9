"""Stage 4: which tumor candidates are kept, and why the others are rejected."""
from __future__ import annotations

import numpy as np
import pytest

from KidneyTumorSegLib.cascade import run_cascade
from KidneyTumorSegLib.config import PostprocessConfig
from KidneyTumorSegLib.findings.findings import apply_candidate_choice
from KidneyTumorSegLib.engine.reference import FalseCandidate, ReferencePredictor, reference_predictors
from KidneyTumorSegLib.cascade.candidates import kidney_contact

from helpers_cascade import dice, ellipsoid, stages, toy_case


def _in_left_kidney(image, label):
    """A kidney voxel a third of the way through the toy case's kidney voxels (left kidney): LPS mm and (k, j, i)."""
    kidney = np.argwhere(label.array == 1)
    k, j, i = kidney[len(kidney) // 3]
    return tuple(image.index_to_world([i, j, k])), (k, j, i)


def test_stage4_keeps_confident_and_rejects_weak_candidates():
    image, label = toy_case()
    # a false candidate inside the left kidney, reported with probability 0.6
    centre, _ = _in_left_kidney(image, label)
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
    centre, (k, j, i) = _in_left_kidney(image, label)
    # a confident false candidate (0.95) at water density: a simple cyst in a kidney
    preds = reference_predictors(label, tumor_probability=1.0, extra=[FalseCandidate(centre, 5.0, 0.95)])
    arr = image.array.copy()
    cyst = ellipsoid(arr.shape, image.spacing_zyx, (k * image.spacing_zyx[0], j * image.spacing_zyx[1],
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


def test_kidney_contact_is_the_fraction_of_surface_area_on_the_kidney():

    cand = np.zeros((6, 6, 6), bool)
    cand[1:5, 1:5, 1:5] = True
    kidney = np.zeros_like(cand)
    kidney[0, 1:5, 1:5] = True  # under one of its six faces
    assert kidney_contact(cand, kidney, (1.0, 1.0, 1.0)) == pytest.approx(1 / 6)
    # by area, not by voxel faces: with 3 mm slices the top and bottom faces are 1/14 of the surface
    assert kidney_contact(cand, kidney, (3.0, 1.0, 1.0)) == pytest.approx(1 / 14)
    # inside the kidney: all of it; kidney voxels under the candidate do not count; the array's edge is not kidney
    assert kidney_contact(cand, np.ones_like(cand), (3.0, 1.0, 1.0)) == pytest.approx(1.0)
    assert kidney_contact(np.ones_like(cand), np.ones_like(cand), (1.0, 1.0, 1.0)) == 0.0
    assert kidney_contact(np.zeros_like(cand), kidney, (1.0, 1.0, 1.0)) == 0.0


def _bowel_beside_kidney_case():
    """Toy case whose right kidney has, on its lateral side, an 8 mm loop that stage 2 takes for kidney
    (it overlaps the kidney by 2 mm) and stage 3 for a confident tumor (as bowel beside the real CT's kidney)."""
    image, label = toy_case()
    sp = image.spacing_zyx
    extent = np.array(image.shape) * np.array(sp)
    centre_mm = (extent[0] / 2, extent[1] * 0.55, extent[2] * 0.3 - 18 - 6)
    loop = ellipsoid(image.shape, sp, centre_mm, (8, 8, 8))
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
    assert dice(res.label.array == 2, label.array == 2) > 0.9  # within resampling error
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
    assert dice(off.label.array == 2, label.array == 2) < dice(res.label.array == 2, label.array == 2) - 0.02
    assert off.report()["tumor_candidates"][0]["kidney_contact"] is not None


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_kidney_contact_setting_is_checked(value):
    with pytest.raises(ValueError) as e:
        PostprocessConfig(min_kidney_contact=value)
    assert str(e.value) == f"min_kidney_contact must be a fraction from 0 to 1, got {value!r}"


def test_report_002_keeps_only_the_largest_candidate_per_kidney():
    image, label = toy_case()
    centre, _ = _in_left_kidney(image, label)
    # a confident false spot beside the left kidney's tumor: two kept candidates on that kidney
    preds = reference_predictors(label, tumor_probability=1.0, extra=[FalseCandidate(centre, 4.0, 0.95)])
    both = run_cascade(image, stages(), preds, PostprocessConfig(candidate_threshold=0.8))
    assert sum(c.kept for c in both.tumors) == 3
    one = run_cascade(image, stages(), preds, PostprocessConfig(candidate_threshold=0.8, max_tumors_per_kidney=1))
    kept = [c for c in one.tumors if c.kept]
    dropped = [c for c in one.tumors if not c.kept]
    assert len(kept) == 2 and {c.side for c in kept} == {"left", "right"} and len(dropped) == 1
    spot = dropped[0]
    assert spot.rejected_because == "not among the largest 1 kept on this kidney (max_tumors_per_kidney)"
    same_side = next(c for c in kept if c.side == spot.side)
    assert same_side.volume_ml > spot.volume_ml
    assert np.all(one.label.array[one.candidates.array == spot.id] != 2)
    with pytest.raises(ValueError, match="max_tumors_per_kidney must be a positive integer or None, got 0"):
        PostprocessConfig(max_tumors_per_kidney=0)


def test_report_003_drops_small_components_slice_by_slice():
    from KidneyTumorSegLib.cascade.candidates import drop_small_slice_components

    mask = np.zeros((3, 20, 20), bool)
    mask[0, 2:10, 2:10] = True  # 64 voxels of 0.5 x 0.5 mm: 16 mm2
    mask[0, 15:17, 15:17] = True  # 4 voxels: 1 mm2
    mask[1, 2:4, 2:4] = True  # 1 mm2 in the next slice, part of the same 3D object
    out = drop_small_slice_components(mask, (3.0, 0.5, 0.5), min_mm2=2.0)
    assert out[0, 2:10, 2:10].all() and out.sum() == 64
    assert drop_small_slice_components(mask, (3.0, 0.5, 0.5), 0.0) is mask
    with pytest.raises(ValueError, match="min_slice_component_mm2 must be from 0 to 10000 mm2"):
        PostprocessConfig(min_slice_component_mm2=-1.0)


def test_report_003_label_assignment_keeps_kidney_only_where_kidney_alone_agrees():
    from KidneyTumorSegLib.config import StageConfig
    from KidneyTumorSegLib.geometry.volume import Volume

    image, label = toy_case()
    st = dict(stages(), kidney_alone=StageConfig("k", "kidney_alone", spacing=(2.5, 1.6, 1.6)))
    preds = reference_predictors(label, tumor_probability=1.0)
    fused = PostprocessConfig(candidate_threshold=0.8, fusion="label_assignment")
    plain = run_cascade(image, stages(), preds, PostprocessConfig(candidate_threshold=0.8))
    # K agrees with the reference kidney: the labels change only at the kidney's edge (resampling)
    same = run_cascade(image, st, dict(preds, kidney_alone=ReferencePredictor(label, labels=(1,))), fused)
    changed = same.label.array != plain.label.array
    assert changed.sum() < 0.005 * (plain.label.array == 1).sum(), (changed.sum(), (plain.label.array == 1).sum())
    assert not (same.label.array[changed]).any()  # only kidney voxels became background
    # K misses the kidney's upper half (k < middle): that part of the kidney becomes background
    lab = label.array.copy()
    middle = lab.shape[0] // 2
    lab[:middle][lab[:middle] == 1] = 0
    half = run_cascade(image, st, dict(preds, kidney_alone=ReferencePredictor(Volume(lab, spacing=label.spacing,
                                                                                       origin=label.origin), labels=(1,))), fused)
    kidney_before, kidney_after = plain.label.array == 1, half.label.array == 1
    assert kidney_after.sum() < 0.75 * kidney_before.sum()
    assert not kidney_after[: middle - 2].any() and kidney_after[middle + 2:].sum() > 0
    np.testing.assert_array_equal(half.label.array == 2, plain.label.array == 2)  # tumors unchanged
    assert sum(k.volume_ml for k in half.kidneys) < 0.75 * sum(k.volume_ml for k in plain.kidneys)
