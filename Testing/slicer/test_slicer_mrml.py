"""A run's results on Slicer's real MRML classes (slicer-core), no stand-in nodes.

Outputs on the CT's grid, the findings table, candidate edits, a second run into the same
segmentation, a failed load, the data tree, ``.seg.nrrd`` storage with closed surfaces. The scene's
nodes are counted around every call: nothing is left behind. Stand-ins (Qt, the application) are in
slicer_harness.py, fixtures in mrml_fixtures.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mrml_fixtures import SKIP_WITHOUT_SLICER_CORE, label_array, load_results, matrix_of, segment_arrays, terminology_tag

pytestmark = SKIP_WITHOUT_SLICER_CORE


def test_results_load_onto_the_ct_grid_with_names_terminology_and_colours(harness, slicer, core_run, tmp_path):
    from KidneyTumorSegLib.findings.terminology import SEG_NRRD_SEGMENTS

    _, outputs, _ = core_run
    ct = slicer.util.loadVolume(str(core_run[0]))
    before = harness.nodes()
    volume, run = load_results(harness, slicer, core_run, tmp_path, volume=ct)
    segmentation = run.segmentationNode
    added = sorted({c for _, c, _ in harness.nodes()} - {c for _, c, _ in before})
    assert len(harness.nodes()) - len(before) == 5, sorted(set(harness.nodes()) - set(before))
    assert added == ["vtkMRMLLabelMapVolumeDisplayNode", "vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationDisplayNode",
                     "vtkMRMLSegmentationNode", "vtkMRMLTableNode"], "segmentation, candidate map, table and displays"
    assert not run.workDir.exists()
    for node in (segmentation, run.tableNode, segmentation.GetNodeReference("KidneyTumorSeg.Candidates")):
        assert node.GetStorageNode() is None, f"{node.GetName()} must not point at the run's removed folder"

    seg = segmentation.GetSegmentation()
    label = label_array(outputs["label"])
    arrays = {}
    for definition in SEG_NRRD_SEGMENTS.values():
        segment = seg.GetSegment(definition.segment_id)
        assert segment is not None, definition.segment_id
        assert segment.GetName() == definition.name
        np.testing.assert_allclose(segment.GetColor(), definition.color, atol=1e-6)
        assert terminology_tag(segment) == definition.terminology_string()
        arrays[definition.segment_id] = harness.helper("labelmaps").segmentArray(
            segmentation, definition.segment_id, volume).astype(bool)
        # Slicer's own export agrees with ours, voxel for voxel
        np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(
            segmentation, definition.segment_id, volume) > 0, arrays[definition.segment_id])
    np.testing.assert_array_equal(arrays["kidney_left"] | arrays["kidney_right"], label == 1)
    np.testing.assert_array_equal(arrays["kidney_tumor"], label == 2)
    assert not (arrays["kidney_left"] & arrays["kidney_right"]).any()
    assert arrays["kidney_left"].any() and arrays["kidney_right"].any()

    candidates = segmentation.GetNodeReference("KidneyTumorSeg.Candidates")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(candidates), label_array(outputs["candidates"]))
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(matrix_of(candidates.GetIJKToRASMatrix)),
                               slicer.util.arrayFromVTKMatrix(matrix_of(volume.GetIJKToRASMatrix)), atol=1e-6)
    assert segmentation.GetNodeReference("KidneyTumorSeg.Input") is volume


def test_findings_table_node_lists_kidneys_and_candidates_with_names_as_header(harness, slicer, core_run, tmp_path,
                                                                               capfd):
    from KidneyTumorSegLib.findings.findings_table import TABLE_COLUMNS, findings_rows

    _, run = load_results(harness, slicer, core_run, tmp_path)
    table = run.tableNode
    report = json.loads(Path(core_run[1]["report"]).read_text(encoding="utf-8"))
    rows = findings_rows(report)
    warnings = len(report["plausibility"]["reasons"])
    assert table.GetNumberOfRows() == len(rows) == warnings + len(report["kidneys"]) + len(report["tumor_candidates"])
    assert [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())] == [n for n, _ in TABLE_COLUMNS]
    # the view's header is the column names, so view row n is table row n
    assert table.GetUseColumnTitleAsColumnHeader()
    assert [table.GetColumnTitle(n) for n, _ in TABLE_COLUMNS] == [n for n, _ in TABLE_COLUMNS]
    assert table.GetLocked()
    assert json.loads(table.GetAttribute("KidneyTumorSeg.Report")) == report
    for r, row in enumerate(rows):
        assert table.GetCellText(r, 0) == str(row[TABLE_COLUMNS[0][0]])
        candidate = harness.module.KidneyTumorSegLogic.candidateOfRow(table, r)
        if row.get("candidate_id") in (None, ""):
            assert candidate is None
        else:
            kept = next(c["kept"] for c in report["tumor_candidates"] if c["id"] == int(row["candidate_id"]))
            assert candidate == {"id": int(row["candidate_id"]), "kept": kept}
    assert "deprecated" not in capfd.readouterr().err


def test_accepting_and_rejecting_candidates_moves_voxels_and_leaves_no_node_behind(harness, slicer, core_run,
                                                                                   tmp_path):
    volume, run = load_results(harness, slicer, core_run, tmp_path)
    segmentation, table = run.segmentationNode, run.tableNode
    logic = harness.module.KidneyTumorSegLogic()
    report = json.loads(table.GetAttribute("KidneyTumorSeg.Report"))
    rejected = next(c["id"] for c in report["tumor_candidates"] if not c["kept"])
    kept = next(c["id"] for c in report["tumor_candidates"] if c["kept"])
    mask = {cid: slicer.util.arrayFromVolume(segmentation.GetNodeReference("KidneyTumorSeg.Candidates")) == cid
            for cid in (rejected, kept)}
    start = segment_arrays(harness, segmentation, volume)
    foreground = start["kidney_left"] | start["kidney_right"] | start["kidney_tumor"]
    before = harness.nodes()

    logic.setCandidateKept(segmentation, rejected, True)
    added = segment_arrays(harness, segmentation, volume)
    np.testing.assert_array_equal(added["kidney_tumor"], start["kidney_tumor"] | mask[rejected])
    assert not ((added["kidney_left"] | added["kidney_right"]) & mask[rejected]).any()
    edited = json.loads(table.GetAttribute("KidneyTumorSeg.Report"))
    assert next(c["kept"] for c in edited["tumor_candidates"] if c["id"] == rejected)
    assert edited["manual_changes"] == [{"candidate": rejected, "kept": True}]
    assert edited["kept_tumors"] == report["kept_tumors"] + 1

    logic.setCandidateKept(segmentation, rejected, False)
    back = segment_arrays(harness, segmentation, volume)
    for key in start:  # the candidate goes back to the kidney it lies in
        np.testing.assert_array_equal(back[key], start[key], err_msg=key)

    logic.setCandidateKept(segmentation, kept, False)
    removed = segment_arrays(harness, segmentation, volume)
    assert not (removed["kidney_tumor"] & mask[kept]).any()
    np.testing.assert_array_equal(removed["kidney_left"] | removed["kidney_right"] | removed["kidney_tumor"], foreground)
    assert not (removed["kidney_left"] & removed["kidney_right"]).any()
    final = json.loads(table.GetAttribute("KidneyTumorSeg.Report"))
    assert [c["kept"] for c in final["tumor_candidates"] if c["id"] == kept] == [False]
    assert len(final["manual_changes"]) == 3
    assert harness.nodes() == before, "a candidate edit adds or removes no node"


def test_a_second_run_into_the_same_segmentation_reuses_its_nodes(harness, slicer, core_run, tmp_path):
    volume, first = load_results(harness, slicer, core_run, tmp_path)
    before = harness.nodes()
    old_candidates = first.segmentationNode.GetNodeReference("KidneyTumorSeg.Candidates")
    _, second = load_results(harness, slicer, core_run, tmp_path, volume=volume, output=first.segmentationNode)
    assert second.segmentationNode is first.segmentationNode
    assert second.tableNode is first.tableNode
    assert old_candidates.GetScene() is None, "the previous candidate map is replaced"
    assert len(harness.nodes()) == len(before)
    assert {c for _, c, _ in harness.nodes()} == {c for _, c, _ in before}
    assert first.segmentationNode.GetSegmentation().GetNumberOfSegments() == 3


def test_a_failed_load_leaves_the_scene_as_it_was(harness, slicer, core_run, tmp_path):
    volume, first = load_results(harness, slicer, core_run, tmp_path)
    segmentation = first.segmentationNode
    start = segment_arrays(harness, segmentation, volume)
    before = harness.nodes()
    _, outputs, _ = core_run
    runs, results = harness.module.runs, harness.module.results
    broken = dict(outputs, candidates=str(tmp_path / "missing.nii.gz"))
    for output in (None, segmentation):
        run = runs.SegmentationRun(volume, {}, tmp_path, output, False)
        with pytest.raises(RuntimeError, match="missing.nii.gz"):
            results.loadResults(run, broken)
        assert harness.nodes() == before
    after = segment_arrays(harness, segmentation, volume)
    for key in start:
        np.testing.assert_array_equal(after[key], start[key])


def test_results_are_placed_beside_the_input_volume_in_the_data_tree(harness, slicer, core_run, tmp_path):
    volume = slicer.util.loadVolume(str(core_run[0]))
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "CT abdomen")
    sh.SetItemParent(sh.GetItemByDataNode(volume), study)
    _, run = load_results(harness, slicer, core_run, tmp_path, volume=volume)
    candidates = run.segmentationNode.GetNodeReference("KidneyTumorSeg.Candidates")
    for node in (run.segmentationNode, run.tableNode, candidates):
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study, node.GetName()
    import vtk

    ids = vtk.vtkIdList()
    sh.GetItemChildren(study, ids)
    assert ids.GetNumberOfIds() == 4, "the CT and the three results, nothing else"


def test_segmentation_saves_as_seg_nrrd_and_builds_a_closed_surface(harness, slicer, core_run, tmp_path):
    import slicerio

    from KidneyTumorSegLib.findings.terminology import SEG_NRRD_SEGMENTS

    volume, run = load_results(harness, slicer, core_run, tmp_path)
    segmentation = run.segmentationNode
    label = label_array(core_run[1]["label"])
    before = harness.nodes()
    harness.module.KidneyTumorSegLogic.showSegmentation3D(segmentation, True)
    assert segmentation.GetDisplayNode().GetVisibility3D()
    closed = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    for definition in SEG_NRRD_SEGMENTS.values():
        import vtk

        surface = vtk.vtkPolyData()
        assert segmentation.GetClosedSurfaceRepresentation(definition.segment_id, surface)
        assert surface.GetNumberOfPoints() > 100, definition.name
    assert segmentation.GetSegmentation().ContainsRepresentation(closed)
    assert harness.nodes() == before, "3D display adds no node"

    path = tmp_path / "saved.seg.nrrd"
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    assert storage.WriteData(segmentation)
    saved = slicerio.read_segmentation(str(path))
    by_name = {s["name"]: s for s in saved["segments"]}
    assert sorted(by_name) == sorted(d.name for d in SEG_NRRD_SEGMENTS.values())
    for definition in SEG_NRRD_SEGMENTS.values():
        assert by_name[definition.name]["terminology"]["type"] == list(definition.type)
    extracted = slicerio.extract_segments(saved, [(d.name, v) for v, d in SEG_NRRD_SEGMENTS.items()])
    voxels = np.asarray(extracted["voxels"])
    assert (voxels > 0).sum() == (label > 0).sum()
    assert ((voxels == 3).sum(), (np.isin(voxels, (1, 2))).sum()) == ((label == 2).sum(), (label == 1).sum())
    reread = slicer.vtkMRMLSegmentationNode()
    slicer.mrmlScene.AddNode(reread)
    reader = slicer.vtkMRMLSegmentationStorageNode()
    reader.SetFileName(str(path))
    assert reader.ReadData(reread)
    arrays = segment_arrays(harness, reread, volume)
    np.testing.assert_array_equal(arrays["kidney_tumor"], label == 2)
    np.testing.assert_array_equal(arrays["kidney_left"] | arrays["kidney_right"], label == 1)


def test_an_implausible_result_says_so_in_the_status_line_and_the_table(harness, slicer, core_run, tmp_path):
    ct, outputs, phantom = core_run
    report = json.loads(Path(outputs["report"]).read_text(encoding="utf-8"))
    report["status"] = "implausible"
    report["plausibility"] = {"plausible": False, "notes": [],
                              "reasons": ["two kidneys on the patient's left: one of them is probably not kidney"]}
    edited = tmp_path / "edited.report.json"
    edited.write_text(json.dumps(report), encoding="utf-8")
    _, run = load_results(harness, slicer, (ct, dict(outputs, report=str(edited)), phantom), tmp_path)
    assert run.messages[0] == ("Implausible result, check it: two kidneys on the patient's left: one of them is "
                               "probably not kidney")
    table = run.tableNode
    from KidneyTumorSegLib.findings.findings_table import TABLE_COLUMNS

    status = [n for n, _ in TABLE_COLUMNS].index("Status")
    assert (table.GetCellText(0, 0), table.GetCellText(0, status)) == ("Warning", "implausible")
    assert harness.module.KidneyTumorSegLogic.candidateOfRow(table, 0) is None
