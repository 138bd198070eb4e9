"""Findings rows from a real cascade report (reference predictors on a phantom)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from KidneyTumorSegLib.cascade import run_cascade
from KidneyTumorSegLib.config import PostprocessConfig, StageConfig
from KidneyTumorSegLib.findings.findings import apply_candidate_choice
from KidneyTumorSegLib.findings.findings_table import TABLE_COLUMNS, findings_markdown, findings_rows, kept_ids_after
from KidneyTumorSegLib.phantom import make_phantom
from KidneyTumorSegLib.engine.reference import FalseCandidate, reference_predictors

STAGES = {
    "roi": StageConfig("coarse", "roi", spacing=(5.0, 5.0, 5.0), margin_mm=15.0),
    "kidney": StageConfig("kidney", "kidney", spacing=(5.0, 2.5, 2.5)),
    "tumor": StageConfig("tumor", "tumor", spacing=(5.0, 2.5, 2.5), mask_outside=True, margin_mm=10.0),
}


@pytest.fixture(scope="module")
def run():
    """A two-kidney phantom with one true tumor and one false candidate the oracle scores 0.6 (rejected)."""
    ph = make_phantom(11, shape=(48, 128, 128), spacing=(2.5, 2.5, 5.0), n_tumors=1, n_cysts=0, kidneys="both")
    kidney = np.argwhere(ph.label.array == 1)
    k, j, i = kidney[len(kidney) // 2]
    false = FalseCandidate(tuple(ph.label.index_to_world([i, j, k])), 6.0, 0.6)
    res = run_cascade(ph.image, STAGES, reference_predictors(ph.label, tumor_probability=1.0, extra=[false]),
                      PostprocessConfig(candidate_threshold=0.8), keep_canonical=False)
    report = json.loads(json.dumps(dict(case="phantom", **res.report())))  # exactly what <case>.report.json holds
    return res, report


def test_rows_list_kidneys_then_candidates_with_their_measurements(run):
    res, report = run
    rows = findings_rows(report)
    names = [n for n, _ in TABLE_COLUMNS]
    assert all(set(names) <= set(r) for r in rows)
    kidneys = [r for r in rows if r["Type"] == "Kidney"]
    tumors = [r for r in rows if r["Type"] == "Tumor candidate"]
    assert rows == kidneys + tumors
    assert sorted(r["Side"] for r in kidneys) == ["Left", "Right"]
    voxel_ml = res.label.voxel_volume_ml()
    for r in kidneys:
        side = 1 if r["Side"] == "Left" else 2
        measured = np.count_nonzero((res.label.array == 1) & (res.sides.array == side)) * voxel_ml
        assert r["Volume (mL)"] == pytest.approx(measured, abs=0.01)
        assert r["Id"] is None and r["Status"] is None and r["candidate_id"] is None
    assert [r["Status"] for r in tumors].count("rejected") == 1 and "kept" in [r["Status"] for r in tumors]
    assert [r["candidate_id"] for r in tumors] == sorted(c.id for c in res.tumors)
    for r in tumors:
        c = next(c for c in res.tumors if c.id == r["candidate_id"])
        assert r["Id"] == str(c.id) and r["Side"] == c.side.capitalize()
        assert r["Volume (mL)"] == pytest.approx(np.count_nonzero(res.candidates.array == c.id) * voxel_ml, abs=0.01)
        assert r["Axial diameter (mm)"] == pytest.approx(c.axial_diameter_mm, abs=0.05)
        assert r["3D diameter (mm)"] == pytest.approx(c.diameter_3d_mm, abs=0.05)
        assert 0 < r["Axial diameter (mm)"] <= r["3D diameter (mm)"]
        assert r["Mean probability"] == pytest.approx(c.mean_probability, abs=5e-4)
        assert r["Status"] == ("kept" if c.kept else "rejected")
        assert r["Core HU"] == pytest.approx(c.core_hu, abs=0.05)
        assert r["Kidney contact (%)"] == pytest.approx(100 * c.kidney_contact, abs=0.05)
        assert 0 < r["Kidney contact (%)"] <= 100
        assert r["Reason"] == (None if c.kept else c.rejected_because)
    rejected = next(r for r in tumors if r["Status"] == "rejected")
    assert rejected["Mean probability"] == pytest.approx(0.6, abs=0.05)
    assert rejected["Reason"] == "mean probability 0.60 < 0.8"


def test_column_types_match_the_values(run):
    _, report = run
    kinds = {"string": str, "int": int, "float": float}
    for row in findings_rows(report):
        for name, kind in TABLE_COLUMNS:
            assert row[name] is None or isinstance(row[name], kinds[kind]), (name, row[name])


def test_kept_ids_after_adding_and_removing(run):
    res, report = run
    kept = {c.id for c in res.tumors if c.kept}
    rejected = {c.id for c in res.tumors if not c.kept}
    assert kept_ids_after(report) == kept
    added = kept_ids_after(report, add=rejected)
    assert added == kept | rejected
    one = sorted(kept)[0]
    assert kept_ids_after(report, add=rejected, remove=[one]) == (kept | rejected) - {one}
    # the new choice applied to the label map: the added candidate becomes tumor, the removed one does not
    label = apply_candidate_choice(res, added - {one})
    assert np.all(label[res.candidates.array == sorted(rejected)[0]] == 2)
    assert not np.any(label[res.candidates.array == one] == 2)
    with pytest.raises(ValueError, match="no tumor candidate with id 999"):
        kept_ids_after(report, add=[999])
    with pytest.raises(ValueError, match="both added and removed"):
        kept_ids_after(report, add=[one], remove=[one])


def test_rows_keep_their_order_when_a_status_changes(run):
    _, report = run
    before = findings_rows(report)
    edited = json.loads(json.dumps(report))
    for c in edited["tumor_candidates"]:
        c["kept"] = not c["kept"]
    after = findings_rows(edited)
    assert [r["candidate_id"] for r in after] == [r["candidate_id"] for r in before]
    assert [r["Status"] for r in after if r["Status"]] == [
        "kept" if s == "rejected" else "rejected" for s in (r["Status"] for r in before) if s]


def test_markdown_and_empty_report(run):
    _, report = run
    text = findings_markdown(report).splitlines()
    assert text[0] == "| " + " | ".join(n for n, _ in TABLE_COLUMNS) + " |"
    assert len(text) == 2 + len(findings_rows(report))
    assert "| Tumor candidate |" in findings_markdown(report) and "rejected" in findings_markdown(report)
    assert findings_rows({"status": "no_kidney", "kidneys": [], "tumor_candidates": []}) == []
    assert findings_rows({}) == []
    assert kept_ids_after({}) == set()


# -- one rule for a candidate edit (findings.choose_candidate), here and in Slicer (test_slicer_candidates*.py) --

def test_a_rejected_candidate_is_kidney_only_inside_the_kidney_region():
    from helpers_candidates import HALF_INSIDE, candidate_masks, candidate_result

    res, masks = candidate_result(), candidate_masks()
    inside3 = masks[3].copy()
    inside3[:, :, :HALF_INSIDE.start] = False
    dropped = apply_candidate_choice(res, set())
    assert np.all(dropped[masks[1]] == 1), "a removed tumor inside the kidney becomes kidney"
    assert np.all(dropped[masks[2]] == 0), "a rejected candidate outside the kidney is not kidney"
    assert np.all(dropped[inside3] == 1) and np.all(dropped[masks[3] & ~inside3] == 0)
    added = apply_candidate_choice(res, {2, 3})
    assert np.all(added[masks[2] | masks[3]] == 2) and np.all(added[masks[1]] == 1)
    untouched = ~(masks[1] | masks[2] | masks[3])
    for label in (dropped, added):
        np.testing.assert_array_equal(label[untouched], res.label.array[untouched])
    np.testing.assert_array_equal(apply_candidate_choice(res, {1}), res.label.array)


def test_the_inside_voxels_of_a_rejected_candidate_go_to_the_nearest_kidney():
    from KidneyTumorSegLib.findings.findings import assign_to_nearest, choose_candidate
    from helpers_candidates import HALF_INSIDE, box, LEFT, RIGHT, candidate_masks, candidate_result

    res, masks = candidate_result(), candidate_masks()
    region = res.sides.array > 0
    kidneys = {"left": box(LEFT), "right": box(RIGHT) & ~masks[3]}
    tumor = masks[1] | masks[2] | masks[3]  # every candidate kept
    after, tumor_after = choose_candidate(kidneys, tumor, masks[3], False, region, (4.0, 2.0, 2.0))
    inside3 = masks[3].copy()
    inside3[:, :, :HALF_INSIDE.start] = False
    np.testing.assert_array_equal(after["right"], box(RIGHT))  # its inside half, the right kidney's
    np.testing.assert_array_equal(after["left"], box(LEFT))
    np.testing.assert_array_equal(tumor_after, masks[1] | masks[2])
    after, _ = choose_candidate(after, tumor_after, masks[2], False, region)
    assert not (after["left"] | after["right"])[masks[2]].any(), "outside the kidney: background"
    kept, tumor_kept = choose_candidate(after, tumor_after, masks[3], True, region)
    assert tumor_kept[masks[3]].all() and not (kept["left"] | kept["right"])[masks[3]].any()
    # no kidney voxel left at all: the first kidney takes the voxels; no kidney: nobody does
    empty = np.zeros(masks[3].shape, bool)
    assert assign_to_nearest(inside3, {"a": empty, "b": empty}, (1.0, 1.0, 1.0))["a"].sum() == inside3.sum()
    assert assign_to_nearest(inside3, {}, (1.0, 1.0, 1.0)) == {}
