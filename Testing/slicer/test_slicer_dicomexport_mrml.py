"""DICOM SEG export from the Slicer module (``dicomexport``) on Slicer's real MRML classes: a result on a CT whose
DICOM series sits in a DICOM database (a stand-in for the application's ``slicer.dicomDatabase``), edited by hand,
exported and read back with pydicom: the edited voxels, the source references, SEMIAUTOMATIC segments."""
from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from helpers_dicom import seg_voxels
from mrml_fixtures import SKIP_WITHOUT_SLICER_CORE, load_results, segment_arrays

pytestmark = SKIP_WITHOUT_SLICER_CORE


class Database:
    """Slicer's DICOM database as the export uses it: a file per SOP Instance UID."""

    def __init__(self, files):
        self.files = {pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID: str(f) for f in files}

    def fileForInstance(self, uid):
        return self.files.get(uid, "")


@pytest.fixture(scope="module")
def dicom_result(tmp_path_factory):
    """(CT path, outputs, result, DICOM files) of the hand-made result, its CT also written as a DICOM series."""
    from helpers_candidates import candidate_result, image_of
    from KidneyTumorSegLib.io.dicom_write import write_dicom_series
    from KidneyTumorSegLib.io.outputs import write_case_outputs
    from KidneyTumorSegLib.io.volume_io import volume_to_sitk

    folder = tmp_path_factory.mktemp("dicom-result")
    result = candidate_result()
    ct = folder / "ct.nrrd"
    sitk.WriteImage(volume_to_sitk(image_of(result)), str(ct))
    outputs = write_case_outputs(result, image_of(result), folder / "out", "c", preview=False, candidates=True)
    files = write_dicom_series(image_of(result), folder / "dicom")
    return ct, {k: str(v) for k, v in outputs.items()}, result, files


def test_an_edited_result_exports_as_a_seg_of_its_source_series(harness, slicer, dicom_result, tmp_path):
    ct, outputs, result, files = dicom_result
    volume, run = load_results(harness, slicer, (ct, outputs, None), tmp_path)
    database = Database(files)
    volume.SetAttribute("DICOM.instanceUIDs", " ".join(reversed(list(database.files))))  # any order
    logic = harness.module.KidneyTumorSegLogic()
    logic.setCandidateKept(run.segmentationNode, 3, True)  # an annotator's correction
    before = harness.nodes()
    out = logic.exportDicomSeg(run.segmentationNode, volume, tmp_path / "c.seg.dcm", database=database)
    assert harness.nodes() == before, "export changes nothing in the scene"
    now = segment_arrays(harness, run.segmentationNode, volume)
    expected = np.zeros(result.label.shape, np.uint8)
    for value, key in ((1, "kidney_left"), (2, "kidney_right"), (3, "kidney_tumor")):
        expected[now[key]] = value
    voxels, ds = seg_voxels(out, files, result.label.shape)
    assert (expected == 3).sum() > (result.label.array == 2).sum()  # the kept candidate is in it
    np.testing.assert_array_equal(voxels, expected)
    source = pydicom.dcmread(str(files[0]), stop_before_pixels=True)
    assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert {s.SegmentAlgorithmType for s in ds.SegmentSequence} == {"SEMIAUTOMATIC"}
    report = json.loads(run.tableNode.GetAttribute("KidneyTumorSeg.Report"))
    assert ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == \
        (report.get("model_version") or "unknown")


def test_a_ct_not_from_the_dicom_database_is_refused(harness, slicer, dicom_result, tmp_path):
    ct, outputs, result, files = dicom_result
    volume, run = load_results(harness, slicer, (ct, outputs, None), tmp_path)
    with pytest.raises(ValueError, match="was not loaded from Slicer's DICOM database"):
        harness.module.KidneyTumorSegLogic().exportDicomSeg(run.segmentationNode, volume, tmp_path / "x.seg.dcm",
                                                            database=Database(files))
    volume.SetAttribute("DICOM.instanceUIDs", "1.2.3.4")
    with pytest.raises(ValueError, match=r"1 source file\(s\) of .* are not in the DICOM database"):
        harness.module.KidneyTumorSegLogic().exportDicomSeg(run.segmentationNode, volume, tmp_path / "x.seg.dcm",
                                                            database=Database(files))
    assert not (tmp_path / "x.seg.dcm").exists()
