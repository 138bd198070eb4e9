"""The module's logic end to end on Slicer's real MRML classes, and its own self-test under the same harness.

``KidneyTumorSegLogic().segment()`` exports the CT, runs the core in a separate process (the
``PythonSlicer`` stand-in runs this interpreter) and loads the result; a second run is cancelled
while it runs. ``KidneyTumorSegTest`` (the test Slicer runs from its Reload & Test button) runs
here as far as it can without Qt, so that its first run inside Slicer is not its first run.
"""
from __future__ import annotations

import time
import unittest

import numpy as np
import pytest
import SimpleITK as sitk

from mrml_fixtures import SKIP_WITHOUT_SLICER_CORE

pytestmark = SKIP_WITHOUT_SLICER_CORE


@pytest.fixture(scope="module")
def phantom_ct(tmp_path_factory):
    from KidneyTumorSegLib.phantom import make_phantom
    from KidneyTumorSegLib.io.volume_io import volume_to_sitk

    phantom = make_phantom(3, shape=(48, 160, 160), spacing=(2.2, 2.2, 5.0), n_tumors=2)
    path = tmp_path_factory.mktemp("phantom") / "phantom.nrrd"
    sitk.WriteImage(volume_to_sitk(phantom.image), str(path))
    return path, phantom


def _wait_for_progress(run, seconds=120):
    import slicer

    deadline = time.time() + seconds
    while run.fraction <= 0 and run.status == "running" and time.time() < deadline:
        slicer.app.processEvents()
        time.sleep(0.05)


def test_segment_then_cancel_a_second_run_on_real_mrml(harness, phantom_ct):
    import slicer

    from KidneyTumorSegLib.evaluation.metrics import dice

    slicer.mrmlScene.Clear(0)
    path, phantom = phantom_ct
    volume = slicer.util.loadVolume(str(path))
    logic = harness.module.KidneyTumorSegLogic()
    temporary = harness.home / "tmp"
    before = harness.nodes()

    segmentation, table = logic.segment(volume, device="cpu")
    added = sorted(c for _, c, _ in set(harness.nodes()) - set(before))
    assert added == ["vtkMRMLLabelMapVolumeDisplayNode", "vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationDisplayNode",
                     "vtkMRMLSegmentationNode", "vtkMRMLTableNode"], added
    assert list(temporary.iterdir()) == [], "the run's folder is removed"
    ids = harness.helper("nodes").segmentIds(segmentation)
    arrays = {k: harness.helper("labelmaps").segmentArray(segmentation, sid, volume) > 0 for k, sid in ids.items()}
    reference = np.asarray(phantom.label.array)
    kidney = arrays["kidney_left"] | arrays["kidney_right"] | arrays["kidney_tumor"]
    assert dice(kidney, reference > 0) >= 0.85, dice(kidney, reference > 0)
    assert table.GetNumberOfRows() >= 2
    assert segmentation.GetNodeReference("KidneyTumorSeg.Findings") is table

    snapshot = harness.nodes()
    finished, progress = [], []
    run = logic.startSegmentation(volume, device="cpu", outputSegmentation=segmentation,
                                  progressCallback=lambda f, text: progress.append(f), finishCallback=finished.append)
    assert harness.nodes() == snapshot, "nothing is added while the run goes on"
    _wait_for_progress(run)
    assert run.status == "running", run.error
    assert progress, "progress reaches the callback through the timer"
    logic.cancel(run)
    assert (run.status, finished) == ("cancelled", [run])
    assert not run.workDir.exists()
    assert not run.process.running
    for _ in range(5):  # the stopped timer no longer polls: nothing arrives later
        slicer.app.processEvents()
        time.sleep(0.05)
    assert finished == [run]
    assert harness.nodes() == snapshot, "a cancelled run leaves the scene as it was"
    after = {k: harness.helper("labelmaps").segmentArray(segmentation, sid, volume) > 0 for k, sid in ids.items()}
    for key in arrays:
        np.testing.assert_array_equal(after[key], arrays[key])


def test_parameter_node_is_one_scene_node_and_refused_input_adds_nothing(harness):
    import slicer

    slicer.mrmlScene.Clear(0)
    logic = harness.module.KidneyTumorSegLogic()
    before = harness.nodes()
    first = logic.getParameterNode()
    logic.getParameterNode()
    added = sorted(set(harness.nodes()) - set(before))
    assert [c for _, c, _ in added] == ["vtkMRMLScriptedModuleNode"]
    assert first.parameterNode.GetSingletonTag() == "KidneyTumorSeg"
    snapshot = harness.nodes()
    with pytest.raises(ValueError, match="No input volume."):
        logic.segment(None)
    refused = {
        slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty"): "The volume 'empty' has no voxels.",
        slicer.util.addVolumeFromArray(np.zeros((1, 64, 64), np.int16), name="slice"):
            "'slice' is a 2D image (array shape (1, 64, 64)); expected a 3D CT volume",
        slicer.util.addVolumeFromArray(np.full((20, 32, 32), np.nan, np.float32), name="nan"):
            "'nan' contains 20480 NaN or infinite voxel(s); the image is corrupt",
    }
    snapshot = harness.nodes()
    for node, message in refused.items():
        with pytest.raises(Exception) as caught:
            logic.segment(node, device="cpu")
        assert str(caught.value) == message
    assert harness.nodes() == snapshot
    assert list((harness.home / "tmp").iterdir()) == [], "nothing is left on disk"


def test_the_modules_self_test_passes_under_the_harness(harness):
    """KidneyTumorSegTest: the sample phantom from Sample Data, segmented twice, then a cancelled run."""
    import slicer

    slicer.mrmlScene.Clear(0)
    case = harness.module.KidneyTumorSegTest()
    result = unittest.TestResult()
    case.run(result)
    problems = [text for _, text in result.errors + result.failures]
    assert result.testsRun == 1 and not problems, "\n".join(problems)
