"""Fixtures and helpers of the tests on Slicer's real MRML classes (test_slicer_mrml*.py, test_slicer_logic_mrml.py).

``harness``: one ``SlicerHarness`` per test module; ``slicer``: the ``slicer`` package with a cleared
scene; ``core_run``: the core's outputs for an oblique phantom CT, made once per session.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from slicer_harness import SlicerHarness, unavailable

# every module that uses these fixtures sets ``pytestmark = SKIP_WITHOUT_SLICER_CORE``
SKIP_WITHOUT_SLICER_CORE = pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "slicer-core is available")
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


@pytest.fixture(scope="session")
def core_run(tmp_path_factory):
    """An oblique phantom CT and the core's outputs for it (shipped model, background process).

    Returns (CT path, outputs by kind, phantom). The CT's axes are turned 12 degrees about S, so
    results that land on the CT's grid in Slicer land there through its full direction matrix.
    """
    from KidneyTumorSegLib.background import run_segmentation
    from KidneyTumorSegLib.phantom import make_phantom
    from KidneyTumorSegLib.run_settings import RunSettings
    from KidneyTumorSegLib.io.volume_io import volume_to_sitk

    folder = tmp_path_factory.mktemp("core-run")
    phantom = make_phantom(3, shape=(48, 160, 160), spacing=(2.2, 2.2, 5.0), n_tumors=2)
    image = volume_to_sitk(phantom.image)
    image.SetDirection(tuple((rotation(2, 12) @ np.asarray(image.GetDirection()).reshape(3, 3)).ravel()))
    ct = folder / "ct.nrrd"
    sitk.WriteImage(image, str(ct))
    outputs = run_segmentation(str(ct), str(folder / "out"), settings=RunSettings(device="cpu", save_candidates=True))
    report = json.loads(Path(outputs["report"]).read_text(encoding="utf-8"))
    kept = {c["kept"] for c in report["tumor_candidates"]}
    assert kept == {True, False}, "the phantom must give a kept and a rejected tumor candidate"
    return ct, outputs, phantom


def load_results(harness, slicer, core_run, tmp_path, volume=None, output=None):
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


def segment_arrays(harness, segmentation, volume):
    """Each segment (by the core's ids) as a boolean array [k, j, i] on ``volume``'s grid."""
    ids = harness.helper("nodes").segmentIds(segmentation)
    return {key: harness.helper("labelmaps").segmentArray(segmentation, sid, volume).astype(bool)
            for key, sid in ids.items()}


def label_array(path):
    """An image file's voxels [k, j, i]."""
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def ijk_to_ras(image: sitk.Image) -> np.ndarray:
    """The IJK-to-RAS matrix Slicer should give an image read from a file with this LPS geometry."""
    m = np.eye(4)
    m[:3, :3] = LPS_TO_RAS @ np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    m[:3, 3] = LPS_TO_RAS @ np.asarray(image.GetOrigin())
    return m


def rotation(axis, degrees):
    """3x3 rotation about axis 0, 1 or 2."""
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [n for n in range(3) if n != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def matrix_of(getter):
    """A vtkMatrix4x4 filled by ``getter`` (e.g. ``node.GetIJKToRASMatrix``)."""
    import vtk

    m = vtk.vtkMatrix4x4()
    getter(m)
    return m


def terminology_tag(segment):
    """The segment's TerminologyEntry tag."""
    import vtk

    value = vtk.reference("")
    assert segment.GetTag(segment.GetTerminologyEntryTagName(), value)
    return str(value)
