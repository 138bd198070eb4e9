"""Plausibility: each reason a failed model's result can give, and none for a normal one."""
from __future__ import annotations

import numpy as np
import pytest

from KidneyTumorSegLib.findings import plausibility
from KidneyTumorSegLib.findings.findings import Candidate, Kidney
from KidneyTumorSegLib.findings.findings_table import findings_markdown, findings_rows
from KidneyTumorSegLib.geometry.volume import Volume

SHAPE = (20, 40, 60)  # k, j, i; 2 mm voxels; LPS x = 2 * i, midline at x = 60


def _scene(kidney_hu=150.0):
    """A CT of soft tissue with a kidney on each side of the midline: (can, label, sides)."""
    hu = np.full(SHAPE, 40.0, np.float32)
    label = np.zeros(SHAPE, np.uint8)
    sides = np.zeros(SHAPE, np.uint8)
    for value, cols in ((1, slice(40, 50)), (2, slice(10, 20))):  # left kidney at x 80-100 (patient's left: +x)
        label[5:15, 10:30, cols] = 1
        sides[5:15, 10:30, cols] = value
        hu[5:15, 10:30, cols] = kidney_hu
    return Volume(hu, spacing=(2.0, 2.0, 2.0)), label, sides


def _kidney(index, side, x, ml=250.0, edge=False, tissue=None):
    return Kidney(index=index, side=side, volume_ml=ml if tissue is None else tissue, volume_with_tumor_ml=ml,
                  centre_lps_mm=(x, 40.0, 20.0), touches_fov_edge=edge)


def _tumor(id_, kidney_index, ml, kept=True, diameter=None):
    d = diameter if diameter is not None else 1.1 * (6 * ml / 3.1416) ** (1 / 3) * 10  # a near ball
    return Candidate(id=id_, kidney_index=kidney_index, side="left", volume_ml=ml, axial_diameter_mm=d,
                     diameter_3d_mm=d, mean_probability=0.9, kept=kept, centre_lps_mm=(90.0, 40.0, 20.0))


NORMAL = [_kidney(0, "left", 90.0), _kidney(1, "right", 30.0)]


def _check(kidneys=NORMAL, tumors=(), candidates=None, **scene):
    can, label, sides = _scene(**scene)
    cand = np.zeros(SHAPE, np.uint16) if candidates is None else candidates
    return plausibility.check(can, label, sides, cand, kidneys, list(tumors), midline_x=60.0)


def test_normal_kidneys_and_a_tumor_are_plausible():
    assert _check(tumors=[_tumor(1, 0, 40.0)]) == {"plausible": True, "reasons": [], "notes": []}


@pytest.mark.parametrize("ml, words", [(30.0, "the left kidney measures 30 mL; real kidneys measure 40-2700 mL"),
                                       (3100.0, "the left kidney measures 3100 mL; real kidneys measure 40-2700 mL")])
def test_a_kidney_smaller_or_larger_than_any_real_one(ml, words):
    assert _check(kidneys=[_kidney(0, "left", 90.0, ml), NORMAL[1]])["reasons"] == [words]


def test_a_kidney_on_the_midline_two_on_one_side_and_one_at_the_edge():
    horseshoe = _check(kidneys=[_kidney(0, "horseshoe", 64.0, 400.0)])
    assert horseshoe["reasons"] == ["the horseshoe kidney's centre is 4 mm from the patient's midline: real kidneys "
                                    "lie beside the spine (a vertebra taken for a kidney looks like this)"]
    both_left = _check(kidneys=[_kidney(0, "left", 90.0), _kidney(1, "left", 120.0)])
    assert both_left["reasons"] == ["two kidneys on the patient's left: one of them is probably not kidney"]
    cut = _check(kidneys=[_kidney(0, "left", 90.0, edge=True), NORMAL[1]])
    assert cut["reasons"] == ["the left kidney touches the edge of the field of view: part of it may be missing"]


@pytest.mark.parametrize("hu, words", [(-80.0, "100% of the left kidney's voxels are fat (HU <= -30)"),
                                       (700.0, "100% of the left kidney's voxels are as dense as bone (HU >= 400)")])
def test_a_kidney_of_fat_or_bone(hu, words):
    reasons = _check(kidney_hu=hu)["reasons"]
    assert reasons == [words, words.replace("left", "right")]


def test_tumors_larger_than_any_real_one_or_at_the_edge_and_one_larger_than_its_kidney_noted():
    big = _check(tumors=[_tumor(1, 0, 2700.0)])
    assert big["reasons"] == ["tumor 1 measures 2700 mL, more than any real kidney tumor (2600 mL)"]
    kidneys = [_kidney(0, "left", 90.0, ml=50.0), NORMAL[1]]
    ratio = _check(kidneys=kidneys, tumors=[_tumor(1, 0, 2000.0)])
    assert ratio["reasons"] == ["tumor 1 (2000 mL) is more than 36 times the size of its kidney (50 mL of kidney tissue)"]
    larger = _check(kidneys=kidneys, tumors=[_tumor(1, 0, 120.0)])
    assert larger == {"plausible": True, "reasons": [], "notes": [
        "tumor 1 (120 mL) is larger than its kidney's remaining tissue (50 mL), as in 71 of the 730 real KiTS "
        "kidneys: check it"]}
    candidates = np.zeros(SHAPE, np.uint16)
    candidates[5:10, 10:20, 50:60] = 2  # reaches the last column
    candidates[5:10, 10:20, 30:35] = 3  # rejected, also inside: not judged
    edge = _check(tumors=[_tumor(2, 0, 40.0), _tumor(3, 0, 1.0, kept=False)], candidates=candidates)
    assert edge["reasons"] == ["tumor 2 touches the edge of the field of view: part of it may be missing"]


def test_warnings_lead_the_findings_table():
    report = {"plausibility": {"plausible": False, "reasons": ["two kidneys on the patient's left: one of them is "
                                                               "probably not kidney"]},
              "kidneys": [{"index": 0, "side": "left", "volume_ml": 200.0}], "tumor_candidates": []}
    rows = findings_rows(report)
    assert [r["Type"] for r in rows] == ["Warning", "Kidney"]
    assert (rows[0]["Status"], rows[0]["Reason"], rows[0]["candidate_id"]) == (
        "implausible", "two kidneys on the patient's left: one of them is probably not kidney", None)
    assert "| Warning |" in findings_markdown(report)


def test_little_kidney_tissue_and_a_strip_shaped_tumor():
    """What a kidney stage run on the wrong anatomy gave: 22 mL of 'kidney' under a 133 mL 'tumor' 103 mm long."""
    kidneys = [_kidney(0, "left", 90.0, ml=155.0, tissue=22.0), NORMAL[1]]
    result = _check(kidneys=kidneys, tumors=[_tumor(1, 0, 133.0, diameter=103.0)])
    assert result["reasons"] == [
        "the left kidney has 22 mL of kidney tissue besides its tumors; real kidneys have 43-660 mL"]
    strip = _check(tumors=[_tumor(1, 0, 45.0, diameter=92.0)])
    assert strip["reasons"] == ["tumor 1 is a strip, not a ball (45 mL across 92 mm), less compact than 99% of "
                                "real kidney tumors"]
    assert _check(tumors=[_tumor(1, 0, 15.0, diameter=80.0)])["reasons"] == [], "too small to judge its shape"
