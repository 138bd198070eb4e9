"""Stage 3's growth passes over tumor that stage 2 left out."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from KidneyTumorSegLib.cascade import run_cascade
from KidneyTumorSegLib.config import PostprocessConfig, StageConfig
from KidneyTumorSegLib.engine.reference import FalseCandidate, ReferencePredictor, reference_predictors
from KidneyTumorSegLib.cascade.candidates import kidney_contact

from helpers_cascade import dice, ellipsoid, stages, toy_case


def _exophytic_case():
    """Two kidneys; the left one with a 14 mm tumor centred on its lateral surface, half of it outside."""
    image, label = toy_case(tumors=False)
    sp = image.spacing_zyx
    extent = np.array(image.shape) * np.array(sp)
    lab = label.array.copy()
    lab[ellipsoid(image.shape, sp, (extent[0] / 2, extent[1] * 0.55, extent[2] * 0.7 + 18), (14, 14, 14))] = 2
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
    assert dice(one.label.array == 2, ref_tumor) < 0.8
    grown = run_cascade(image, st, preds, post=PostprocessConfig(tumor_growth_passes=3, tumor_growth_mm=13.0))
    assert dice(grown.label.array == 2, ref_tumor) > 0.97
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


def test_kidney_contact_is_judged_before_growth():
    # an exophytic tumor grows past stage 2's kidney: its grown surface borders the kidney over less than
    # its first pass's did, and it must stay a tumor
    image, label, st, preds = _exophytic_setup()
    post = PostprocessConfig(tumor_growth_passes=3, tumor_growth_mm=13.0, min_kidney_contact=0.45)
    grown = run_cascade(image, st, preds, post=post)
    assert dice(grown.label.array == 2, label.array == 2) > 0.97
    whole = kidney_contact(grown.label.array == 2, grown.label.array == 1, image.spacing_zyx)
    kept = [c for c in grown.tumors if c.kept]
    assert len(kept) == 1 and whole < 0.45 <= kept[0].kidney_contact
