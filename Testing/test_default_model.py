"""The shipped default model: verified, within its size budget, and good enough on the sample phantom.

The same case and bar as the Slicer self-test (``KidneyTumorSegLib.sample``), run here without Slicer.
"""
from __future__ import annotations

import numpy as np
import pytest

from KidneyTumorSegLib import sample
from KidneyTumorSegLib.bundle import default_bundle_path, load_bundle
from KidneyTumorSegLib.config import RuntimeConfig
from KidneyTumorSegLib.metrics import dice
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


def test_default_model_reports_two_kidneys_on_the_sample_phantom(sample_result):
    _, result = sample_result
    report = result.report()
    assert sorted(k["side"] for k in report["kidneys"]) == ["left", "right"]
    assert all(60 <= k["volume_ml"] <= 400 for k in report["kidneys"]), report["kidneys"]
