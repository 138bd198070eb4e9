"""The module's Slicer-side code on Slicer's own MRML classes (slicer-core), no stand-in nodes.

Loading a CT, bringing the core's outputs into the scene, the findings table, candidate edits,
a second run into the same segmentation, an ROI under a transform, the export for the background
run, ``.seg.nrrd`` storage with a closed surface, and the data tree. The scene's nodes are counted
around every call: nothing is left behind. Stand-ins (Qt, the application) are in slicer_harness.py.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from slicer_harness import SlicerHarness, unavailable

pytestmark = pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "slicer-core is available")

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    h = SlicerHarness(tmp_path_factory.mktemp("slicer-home"))
    h.install()
    yield h
    h.uninstall()


@pytest.fixture
def slicer(harness):
    """Slicer's ``slicer`` package with a cleared scene (as the self-test's setUp does)."""
    import slicer

    harness.scene.Clear(0)
    return slicer


@pytest.fixture(scope="module")
def core_run(tmp_path_factory):
    """An oblique phantom CT and the core's outputs for it (shipped model, background process).

    Returns (CT path, outputs by kind, phantom). The CT's axes are turned 12 degrees about S, so
    results that land on the CT's grid in Slicer land there through its full direction matrix.
    """
    from KidneyTumorSegLib.background import run_segmentation
    from KidneyTumorSegLib.phantom import make_phantom
    from KidneyTumorSegLib.volume_io import volume_to_sitk

    folder = tmp_path_factory.mktemp("core-run")
    phantom = make_phantom(3, shape=(48, 160, 160), spacing=(2.2, 2.2, 5.0), n_tumors=2)
    image = volume_to_sitk(phantom.image)
    image.SetDirection(tuple((_rotation(2, 12) @ np.asarray(image.GetDirection()).reshape(3, 3)).ravel()))
    ct = folder / "ct.nrrd"
    sitk.WriteImage(image, str(ct))
    outputs = run_segmentation(str(ct), str(folder / "out"), device="cpu", save_candidates=True)
    report = json.loads(Path(outputs["report"]).read_text(encoding="utf-8"))
    kept = {c["kept"] for c in report["tumor_candidates"]}
    assert kept == {True, False}, "the phantom must give a kept and a rejected tumor candidate"
    return ct, outputs, phantom


def _load_results(harness, slicer, core_run, tmp_path, volume=None, output=None):
    """Load the core's outputs as a finished run does (from a copy: the run's folder is removed after)."""
    ct, outputs, _ = core_run
    runs = harness.module.runs
    volume = volume or slicer.util.loadVolume(str(ct))
    work = tmp_path / f"work{len(list(tmp_path.iterdir()))}"
    work.mkdir()
    copies = {kind: str(shutil.copy(path, work / Path(path).name)) for kind, path in outputs.items()}
    run = runs.SegmentationRun(volume, {}, work, output, False)
    harness.module.results.loadResults(run, copies)
    runs.finish(run, "done")
    return volume, run


def _label(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _ijk_to_ras(image: sitk.Image) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = LPS_TO_RAS @ np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    m[:3, 3] = LPS_TO_RAS @ np.asarray(image.GetOrigin())
    return m


def _rotation(axis, degrees):
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [n for n in range(3) if n != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


GEOMETRIES = {
    "axial, anisotropic": (np.eye(3), (0.7, 0.8, 5.0)),
    "oblique": (_rotation(0, 20) @ _rotation(2, -35), (1.0, 1.5, 2.5)),
    "flipped axes": (np.diag([1.0, -1.0, -1.0]), (0.9, 0.9, 3.0)),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_a_ct_loads_with_its_file_geometry_and_exports_back_exactly(harness, slicer, tmp_path, name):
    direction, spacing = GEOMETRIES[name]
    voxels = np.random.default_rng(0).integers(-1000, 1500, (12, 20, 24)).astype(np.int16)
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing(spacing)
    image.SetDirection(tuple(direction.ravel()))
    image.SetOrigin((-120.5, 80.25, -300.0))
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(image, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    node = slicer.util.loadVolume(str(path))

    matrix = slicer.util.arrayFromVTKMatrix(_matrix(slicer, node.GetIJKToRASMatrix))
    np.testing.assert_allclose(matrix, _ijk_to_ras(image), atol=1e-5)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), voxels)

    before = harness.nodes()
    exported = tmp_path / "export" / "input.nrrd"
    exported.parent.mkdir()
    harness.module.runs.exportVolume(node, exported)  # what the background run reads
    back = sitk.ReadImage(str(exported))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), voxels)
    np.testing.assert_allclose(back.GetSpacing(), spacing, atol=1e-9)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-9)
    assert harness.nodes() == before, "exporting adds nothing to the scene"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, "the input file is not touched"


def _matrix(slicer, getter):
    import vtk

    m = vtk.vtkMatrix4x4()
    getter(m)
    return m


def test_results_load_onto_the_ct_grid_with_names_terminology_and_colours(harness, slicer, core_run, tmp_path):
    from KidneyTumorSegLib.terminology import SEG_NRRD_SEGMENTS

    _, outputs, _ = core_run
    ct = slicer.util.loadVolume(str(core_run[0]))
    before = harness.nodes()
    volume, run = _load_results(harness, slicer, core_run, tmp_path, volume=ct)
    segmentation = run.segmentationNode
    added = sorted({c for _, c, _ in harness.nodes()} - {c for _, c, _ in before})
    assert len(harness.nodes()) - len(before) == 5, sorted(set(harness.nodes()) - set(before))
    assert added == ["vtkMRMLLabelMapVolumeDisplayNode", "vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationDisplayNode",
                     "vtkMRMLSegmentationNode", "vtkMRMLTableNode"], "segmentation, candidate map, table and displays"
    assert not run.workDir.exists()
    for node in (segmentation, run.tableNode, segmentation.GetNodeReference("KidneyTumorSeg.Candidates")):
        assert node.GetStorageNode() is None, f"{node.GetName()} must not point at the run's removed folder"

    seg = segmentation.GetSegmentation()
    label = _label(outputs["label"])
    arrays = {}
    for definition in SEG_NRRD_SEGMENTS.values():
        segment = seg.GetSegment(definition.segment_id)
        assert segment is not None, definition.segment_id
        assert segment.GetName() == definition.name
        np.testing.assert_allclose(segment.GetColor(), definition.color, atol=1e-6)
        assert _tag(segment) == definition.terminology_string()
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
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(candidates), _label(outputs["candidates"]))
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(_matrix(slicer, candidates.GetIJKToRASMatrix)),
                               slicer.util.arrayFromVTKMatrix(_matrix(slicer, volume.GetIJKToRASMatrix)), atol=1e-6)
    assert segmentation.GetNodeReference("KidneyTumorSeg.Input") is volume


def _tag(segment):
    import vtk

    value = vtk.reference("")
    assert segment.GetTag(segment.GetTerminologyEntryTagName(), value)
    return str(value)


def test_findings_table_node_lists_kidneys_and_candidates_with_names_as_header(harness, slicer, core_run, tmp_path,
                                                                               capfd):
    from KidneyTumorSegLib.findings_table import TABLE_COLUMNS, findings_rows

    _, run = _load_results(harness, slicer, core_run, tmp_path)
    table = run.tableNode
    report = json.loads(Path(core_run[1]["report"]).read_text(encoding="utf-8"))
    rows = findings_rows(report)
    assert table.GetNumberOfRows() == len(rows) == len(report["kidneys"]) + len(report["tumor_candidates"])
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


def _segment_arrays(harness, segmentation, volume):
    ids = harness.helper("nodes").segmentIds(segmentation)
    return {key: harness.helper("labelmaps").segmentArray(segmentation, sid, volume).astype(bool)
            for key, sid in ids.items()}


def test_accepting_and_rejecting_candidates_moves_voxels_and_leaves_no_node_behind(harness, slicer, core_run,
                                                                                   tmp_path):
    volume, run = _load_results(harness, slicer, core_run, tmp_path)
    segmentation, table = run.segmentationNode, run.tableNode
    logic = harness.module.KidneyTumorSegLogic()
    report = json.loads(table.GetAttribute("KidneyTumorSeg.Report"))
    rejected = next(c["id"] for c in report["tumor_candidates"] if not c["kept"])
    kept = next(c["id"] for c in report["tumor_candidates"] if c["kept"])
    mask = {cid: slicer.util.arrayFromVolume(segmentation.GetNodeReference("KidneyTumorSeg.Candidates")) == cid
            for cid in (rejected, kept)}
    start = _segment_arrays(harness, segmentation, volume)
    foreground = start["kidney_left"] | start["kidney_right"] | start["kidney_tumor"]
    before = harness.nodes()

    logic.setCandidateKept(segmentation, rejected, True)
    added = _segment_arrays(harness, segmentation, volume)
    np.testing.assert_array_equal(added["kidney_tumor"], start["kidney_tumor"] | mask[rejected])
    assert not ((added["kidney_left"] | added["kidney_right"]) & mask[rejected]).any()
    edited = json.loads(table.GetAttribute("KidneyTumorSeg.Report"))
    assert next(c["kept"] for c in edited["tumor_candidates"] if c["id"] == rejected)
    assert edited["manual_changes"] == [{"candidate": rejected, "kept": True}]
    assert edited["kept_tumors"] == report["kept_tumors"] + 1

    logic.setCandidateKept(segmentation, rejected, False)
    back = _segment_arrays(harness, segmentation, volume)
    for key in start:  # the candidate goes back to the kidney it lies in
        np.testing.assert_array_equal(back[key], start[key], err_msg=key)

    logic.setCandidateKept(segmentation, kept, False)
    removed = _segment_arrays(harness, segmentation, volume)
    assert not (removed["kidney_tumor"] & mask[kept]).any()
    np.testing.assert_array_equal(removed["kidney_left"] | removed["kidney_right"] | removed["kidney_tumor"], foreground)
    assert not (removed["kidney_left"] & removed["kidney_right"]).any()
    final = json.loads(table.GetAttribute("KidneyTumorSeg.Report"))
    assert [c["kept"] for c in final["tumor_candidates"] if c["id"] == kept] == [False]
    assert len(final["manual_changes"]) == 3
    assert harness.nodes() == before, "a candidate edit adds or removes no node"


def test_a_second_run_into_the_same_segmentation_reuses_its_nodes(harness, slicer, core_run, tmp_path):
    volume, first = _load_results(harness, slicer, core_run, tmp_path)
    before = harness.nodes()
    old_candidates = first.segmentationNode.GetNodeReference("KidneyTumorSeg.Candidates")
    _, second = _load_results(harness, slicer, core_run, tmp_path, volume=volume, output=first.segmentationNode)
    assert second.segmentationNode is first.segmentationNode
    assert second.tableNode is first.tableNode
    assert old_candidates.GetScene() is None, "the previous candidate map is replaced"
    assert len(harness.nodes()) == len(before)
    assert {c for _, c, _ in harness.nodes()} == {c for _, c, _ in before}
    assert first.segmentationNode.GetSegmentation().GetNumberOfSegments() == 3


def test_a_failed_load_leaves_the_scene_as_it_was(harness, slicer, core_run, tmp_path):
    volume, first = _load_results(harness, slicer, core_run, tmp_path)
    segmentation = first.segmentationNode
    start = _segment_arrays(harness, segmentation, volume)
    before = harness.nodes()
    _, outputs, _ = core_run
    runs, results = harness.module.runs, harness.module.results
    broken = dict(outputs, candidates=str(tmp_path / "missing.nii.gz"))
    for output in (None, segmentation):
        run = runs.SegmentationRun(volume, {}, tmp_path, output, False)
        with pytest.raises(RuntimeError, match="missing.nii.gz"):
            results.loadResults(run, broken)
        assert harness.nodes() == before
    after = _segment_arrays(harness, segmentation, volume)
    for key in start:
        np.testing.assert_array_equal(after[key], start[key])


def test_results_are_placed_beside_the_input_volume_in_the_data_tree(harness, slicer, core_run, tmp_path):
    volume = slicer.util.loadVolume(str(core_run[0]))
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "CT abdomen")
    sh.SetItemParent(sh.GetItemByDataNode(volume), study)
    _, run = _load_results(harness, slicer, core_run, tmp_path, volume=volume)
    candidates = run.segmentationNode.GetNodeReference("KidneyTumorSeg.Candidates")
    for node in (run.segmentationNode, run.tableNode, candidates):
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study, node.GetName()
    import vtk

    ids = vtk.vtkIdList()
    sh.GetItemChildren(study, ids)
    assert ids.GetNumberOfIds() == 4, "the CT and the three results, nothing else"


def test_roi_under_a_linear_transform_is_given_in_the_volumes_own_frame(harness, slicer):
    import vtk

    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    to_parent = np.eye(4)
    to_parent[:3, :3] = _rotation(2, 90)
    to_parent[:3, 3] = (10.0, -20.0, 30.0)
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(to_parent))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "kidneys")
    roi.SetCenter(15.0, 25.0, -40.0)
    roi.SetSize(40.0, 60.0, 80.0)
    box = harness.module.runs.roiInVolumeFrame(roi, volume)
    # the ROI's corners (world RAS) taken back into the volume's frame, then to LPS
    corners = np.array([[15.0 + sx * 20.0, 25.0 + sy * 30.0, -40.0 + sz * 40.0, 1.0]
                        for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    local = (np.linalg.inv(to_parent) @ corners.T).T[:, :3] * np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(box.lo, local.min(axis=0), atol=1e-6)
    np.testing.assert_allclose(box.hi, local.max(axis=0), atol=1e-6)
    # an ROI moved with the volume is, in the volume's frame, the box it was drawn as
    roi.SetAndObserveTransformNodeID(transform.GetID())
    box = harness.module.runs.roiInVolumeFrame(roi, volume)
    np.testing.assert_allclose(box.lo, [-35.0, -55.0, -80.0], atol=1e-6)  # RAS (15, 25, -40) +- half size, in LPS
    np.testing.assert_allclose(box.hi, [5.0, 5.0, 0.0], atol=1e-6)
    # a non-linear transform is refused with the module's message
    grid = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    displacement = vtk.vtkImageData()
    displacement.SetDimensions(4, 4, 4)
    displacement.AllocateScalars(vtk.VTK_DOUBLE, 3)
    grid.GetTransformFromParentAs("vtkOrientedGridTransform").SetDisplacementGridData(displacement)
    volume.SetAndObserveTransformNodeID(grid.GetID())
    assert not grid.IsTransformToWorldLinear()
    with pytest.raises(ValueError, match="non-linear transform: harden it first"):
        harness.module.runs.roiInVolumeFrame(roi, volume)


def test_segmentation_saves_as_seg_nrrd_and_builds_a_closed_surface(harness, slicer, core_run, tmp_path):
    import slicerio

    from KidneyTumorSegLib.terminology import SEG_NRRD_SEGMENTS

    volume, run = _load_results(harness, slicer, core_run, tmp_path)
    segmentation = run.segmentationNode
    label = _label(core_run[1]["label"])
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
    arrays = _segment_arrays(harness, reread, volume)
    np.testing.assert_array_equal(arrays["kidney_tumor"], label == 2)
    np.testing.assert_array_equal(arrays["kidney_left"] | arrays["kidney_right"], label == 1)
