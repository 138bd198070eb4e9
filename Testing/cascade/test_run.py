"""The cascade end to end, driven by exact predictors built from reference labels: grids, kidneys, ROI, stage channels."""
from __future__ import annotations

import numpy as np
import pytest

from KidneyTumorSegLib.cascade import RoiWorld, run_cascade
from KidneyTumorSegLib.config import NetworkConfig, StageConfig, PostprocessConfig
from KidneyTumorSegLib.findings.findings import kits_labels, segment_map
from KidneyTumorSegLib.evaluation.metrics import case_metrics
from KidneyTumorSegLib.engine.reference import ReferencePredictor, reference_predictors
from KidneyTumorSegLib.geometry.volume import Volume

from helpers_cascade import SHARED, dice, ellipsoid, stages, toy_case


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


def test_one_kidney():
    image, label = toy_case(kidneys=("left",))
    res = run_cascade(image, stages(), reference_predictors(label, tumor_probability=1.0))
    assert [k.side for k in res.kidneys] == ["left"]
    assert any("one kidney found (left)" in m for m in res.messages)
    seg = segment_map(res.label.array, res.sides.array)
    assert set(np.unique(seg)) == {0, 1, 3}


def test_horseshoe_kidney_is_one_component_split_in_segments():
    image, label = toy_case(kidneys=(), tumors=False)
    sp = image.spacing_zyx
    extent = np.array(image.shape) * np.array(sp)
    lab = np.zeros(image.shape, np.uint8)
    lab[ellipsoid(image.shape, sp, (extent[0] / 2, extent[1] * 0.55, extent[2] / 2), (25, 15, 80))] = 1
    label = label.with_array(lab)
    res = run_cascade(image, stages(), reference_predictors(label))
    assert [k.side for k in res.kidneys] == ["horseshoe"]
    assert any("horseshoe" in m for m in res.messages)
    seg = segment_map(res.label.array, res.sides.array)
    assert (seg == 1).sum() > 0 and (seg == 2).sum() > 0
    np.testing.assert_array_equal(kits_labels(seg), res.label.array)  # the way back, as the web app's NIfTI download


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
    assert dice(res.label.array > 0, label.array > 0) > 0.98


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


class Halfway:
    """Answers as ``inner`` does, saying it is half done, then done, as a sliding window would."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def predict(self, vol, progress=None):
        if progress is not None:
            progress(0.5)
        out = self.inner.predict(vol)
        if progress is not None:
            progress(1.0)
        return out


def _events(post=PostprocessConfig()):
    image, label = toy_case()
    preds = {role: Halfway(p) for role, p in reference_predictors(label, tumor_probability=1.0).items()}
    events = []
    run_cascade(image, stages(), preds, post, progress=lambda s, f, m: events.append((s, round(f, 3), m)))
    return events


def test_each_stage_reports_its_predictions_progress():
    events = _events()
    assert [e for e in events if e[0] == "roi"] == [
        ("roi", 0.0, "locating kidneys"), ("roi", 0.5, "locating kidneys"), ("roi", 1.0, "locating kidneys"), ("roi", 1.0, "")]
    assert ("kidney", 0.5, "segmenting kidneys") in events
    tumor = [e for e in events if e[0] == "tumor"]
    # two kidneys, one pass each: half of the first kidney is a quarter of the stage
    assert [f for _, f, _ in tumor] == [0.0, 0.25, 0.5, 0.5, 0.75, 1.0, 1.0]
    assert {m for _, _, m in tumor[:-1]} == {"tumors in the left kidney", "tumors in the right kidney"}
    assert [e[0] for e in events if e[2] == "" and e[1] == 1.0] == ["prepare", "roi", "kidney", "tumor", "candidates"]


def test_growth_passes_share_their_kidneys_part_of_the_bar():
    tumor = [f for s, f, _ in _events(PostprocessConfig(tumor_growth_passes=3, tumor_growth_mm=13.0)) if s == "tumor"]
    assert tumor == sorted(tumor) and tumor[0] == 0.0 and tumor[-1] == 1.0
    # the first pass of the first kidney is a quarter of its half, when three growth passes may follow
    assert tumor[1] == 0.062


class _OldStyle:
    """A predictor written before progress was passed: ``predict(volume)`` only."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def predict(self, vol):
        return self.inner.predict(vol)


def test_a_predictor_without_progress_still_runs_and_the_stage_reports_its_ends():
    image, label = toy_case()
    preds = {role: _OldStyle(p) for role, p in reference_predictors(label, tumor_probability=1.0).items()}
    events = []
    res = run_cascade(image, stages(), preds, progress=lambda s, f, m: events.append((s, round(f, 3))))
    assert sorted(k.side for k in res.kidneys) == ["left", "right"]
    assert [f for s, f in events if s == "kidney"] == [0.0, 1.0]
