"""Candidate edits on Slicer's real MRML classes follow the core's rule (findings.choose_candidate).

A result made by hand (helpers_candidates.py) and written by the core's own writers is loaded as a
finished run would be; then candidates are added and removed in the segmentation. A rejected candidate
lying outside the kidney stays background when it is added back and removed again, as the core's
``apply_candidate_choice`` has it; inside voxels go to the nearest kidney segment.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from mrml_fixtures import SKIP_WITHOUT_SLICER_CORE, load_results, segment_arrays

pytestmark = SKIP_WITHOUT_SLICER_CORE


@pytest.fixture(scope="module")
def by_hand(tmp_path_factory):
    """(CT path, outputs by kind, result) of the hand-made result, as a run writes them."""
    from helpers_candidates import candidate_result, image_of
    from KidneyTumorSegLib.io.outputs import write_case_outputs
    from KidneyTumorSegLib.io.volume_io import volume_to_sitk

    folder = tmp_path_factory.mktemp("by-hand")
    result = candidate_result()
    ct = folder / "ct.nrrd"
    sitk.WriteImage(volume_to_sitk(image_of(result)), str(ct))
    outputs = write_case_outputs(result, image_of(result), folder / "out", "c", preview=False, candidates=True)
    return ct, {k: str(v) for k, v in outputs.items()}, result


def _kits_label(arrays):
    label = np.zeros(arrays["kidney_tumor"].shape, np.uint8)
    label[arrays["kidney_left"] | arrays["kidney_right"]] = 1
    label[arrays["kidney_tumor"]] = 2
    return label


def test_a_rejected_candidate_outside_the_kidney_stays_background(harness, slicer, by_hand, tmp_path):
    from helpers_candidates import HALF_INSIDE, candidate_masks
    from KidneyTumorSegLib.findings.findings import apply_candidate_choice

    ct, outputs, result = by_hand
    masks = candidate_masks()
    volume, run = load_results(harness, slicer, (ct, outputs, None), tmp_path)
    segmentation = run.segmentationNode
    logic = harness.module.KidneyTumorSegLogic()
    start = segment_arrays(harness, segmentation, volume)
    np.testing.assert_array_equal(_kits_label(start), result.label.array)
    before = harness.nodes()

    for cid, keep in ((2, True), (3, True), (1, False), (2, False), (3, False)):
        logic.setCandidateKept(segmentation, cid, keep)
    now = segment_arrays(harness, segmentation, volume)
    kidneys = now["kidney_left"] | now["kidney_right"] | now["kidney_tumor"]
    assert not kidneys[masks[2]].any(), "outside the kidney: background, not the nearest kidney"
    inside3 = masks[3].copy()
    inside3[:, :, :HALF_INSIDE.start] = False
    assert now["kidney_right"][inside3].all() and not kidneys[masks[3] & ~inside3].any()
    assert now["kidney_left"][masks[1]].all() and not now["kidney_tumor"].any()
    # the same choice made by the core gives the same label map, voxel for voxel
    np.testing.assert_array_equal(_kits_label(now), apply_candidate_choice(result, set()))
    logic.setCandidateKept(segmentation, 2, True)
    again = segment_arrays(harness, segmentation, volume)
    np.testing.assert_array_equal(_kits_label(again), apply_candidate_choice(result, {2}))
    report = json.loads(run.tableNode.GetAttribute("KidneyTumorSeg.Report"))
    assert [c["kept"] for c in report["tumor_candidates"]] == [False, True, False]
    assert harness.nodes() == before, "a candidate edit adds or removes no node"


def test_a_candidate_kept_by_hand_gets_the_cores_nephrometry_in_report_and_table(harness, slicer, by_hand, tmp_path):
    from KidneyTumorSegLib.findings.findings_table import TABLE_COLUMNS, findings_rows
    from KidneyTumorSegLib.findings.nephrometry import nephrometry_on_grid

    ct, outputs, result = by_hand
    volume, run = load_results(harness, slicer, (ct, outputs, None), tmp_path)
    segmentation = run.segmentationNode
    harness.module.KidneyTumorSegLogic().setCandidateKept(segmentation, 3, True)
    now = segment_arrays(harness, segmentation, volume)
    report = json.loads(run.tableNode.GetAttribute("KidneyTumorSeg.Report"))
    third = next(c for c in report["tumor_candidates"] if c["id"] == 3)
    expected = nephrometry_on_grid(result.label, now["kidney_right"], result.candidates.array == 3,
                                   now["kidney_tumor"]).to_dict()
    assert third["kept"] and third["nephrometry"] == expected
    rows = findings_rows(report)
    row = next(n for n, r in enumerate(rows) if r["candidate_id"] == 3)
    column = [n for n, _ in TABLE_COLUMNS].index("R.E.N.A.L.")
    assert run.tableNode.GetTable().GetValue(row, column).ToString() == expected["score"]
    assert rows[row]["R.E.N.A.L."] == expected["score"] and expected["R"] == 1
