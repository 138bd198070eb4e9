"""The shipped default model: verified, within its size budget, and good enough on the sample phantom.

The same case and bar as the Slicer self-test (``KidneyTumorSegLib.phantom.sample``), run here without Slicer.
"""
from __future__ import annotations

import numpy as np
import pytest

from KidneyTumorSegLib.phantom import sample
from KidneyTumorSegLib.bundles.bundle import default_bundle_path, load_bundle
from KidneyTumorSegLib.config import RuntimeConfig
from KidneyTumorSegLib.evaluation.metrics import dice
from KidneyTumorSegLib.pipeline import Segmenter

MAX_BYTES = 20 * 2**20  # issue 3: the default model ships in the repository, at most 20 MB


def test_default_model_is_shipped_verified_and_small():
    path = default_bundle_path()
    bundle = load_bundle(path)  # checks every file's SHA-256 against the manifest
    assert set(bundle.stages) == {"roi", "kidney", "tumor"}
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    assert size <= MAX_BYTES, f"{size / 2**20:.1f} MB"
    # it says what it was trained on
    assert "phantom" in bundle.provenance.get("data", "").lower()
    # stage 4's rules as measured (README, the method, step 4): a single confident voxel is no tumor
    post = bundle.postprocess
    assert (post.candidate_threshold, post.min_kidney_contact, post.cyst_max_hu) == (0.8, 0.3, 20.0)
    assert (post.min_candidate_ml, post.min_listed_ml) == (0.1, 0.05)


@pytest.fixture(scope="module")
def sample_result():
    phantom = sample.make_sample_phantom()
    result = Segmenter(runtime=RuntimeConfig(device="cpu", tta=1)).segment(phantom.image)
    return phantom, result


def test_default_model_segments_the_sample_phantom(sample_result):
    phantom, result = sample_result
    pred = np.asarray(result.label.array)
    ref = np.asarray(phantom.label.array)
    assert pred.shape == ref.shape
    kidney, tumor = dice(pred > 0, ref > 0), dice(pred == 2, ref == 2)
    assert kidney >= sample.KIDNEY_DICE_MIN, kidney
    assert tumor >= sample.TUMOR_DICE_MIN, tumor
    assert (result.status, result.plausibility["reasons"]) == ("ok", []), "a good result is not flagged"


def test_default_model_reports_two_kidneys_on_the_sample_phantom(sample_result):
    _, result = sample_result
    report = result.report()
    assert sorted(k["side"] for k in report["kidneys"]) == ["left", "right"]
    assert all(60 <= k["volume_ml"] <= 400 for k in report["kidneys"]), report["kidneys"]


def test_default_model_on_the_real_ct_finds_two_kidneys_and_no_tumor():
    """Issue 3: on the one real abdominal CT (no labels) two kidneys of plausible size and place, and no tumor."""
    from helpers_ct import shared

    from KidneyTumorSegLib.io import volume_io

    image = volume_io.read_volume(shared("real-abdominal-ct-dicom"))
    report = Segmenter(runtime=RuntimeConfig(device="cpu", tta=1)).segment(image).report()
    kidneys = {k["side"]: k for k in report["kidneys"]}
    assert sorted(kidneys) == ["left", "right"]
    assert all(120 <= k["volume_ml"] <= 300 for k in kidneys.values()), report["kidneys"]
    # LPS: the patient's left is +x; both beside the spine, at the same height within 5 cm
    assert kidneys["left"]["centre_lps_mm"][0] > 40 and kidneys["right"]["centre_lps_mm"][0] < -40
    assert abs(kidneys["left"]["centre_lps_mm"][2] - kidneys["right"]["centre_lps_mm"][2]) < 50
    assert report["kept_tumors"] == 0, [c for c in report["tumor_candidates"] if c["kept"]]
    assert (report["status"], report["plausibility"]["reasons"]) == ("ok", []), "two real kidneys are not flagged"
