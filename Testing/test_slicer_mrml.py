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
    """A phantom CT and the core's outputs for it (shipped model, background process): (ct path, outputs, phantom)."""
    from KidneyTumorSegLib.background import run_segmentation
    from KidneyTumorSegLib.phantom import make_phantom
    from KidneyTumorSegLib.volume_io import volume_to_sitk

    folder = tmp_path_factory.mktemp("core-run")
    phantom = make_phantom(3, shape=(48, 160, 160), spacing=(2.2, 2.2, 5.0), n_tumors=2)
    ct = folder / "ct.nrrd"
    sitk.WriteImage(volume_to_sitk(phantom.image), str(ct))
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
