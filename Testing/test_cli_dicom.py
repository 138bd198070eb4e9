"""DICOM in, DICOM SEG out on the command line: a phantom written as a DICOM series (``phantom --dicom``), segmented
with ``--dicom-seg``; the SEG holds the .seg.nrrd's voxels and names the bundle by its manifest's SHA-256."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import slicerio

from KidneyTumorSegLib.cli import main
from helpers_bundle import make_tiny_bundle
from helpers_dicom import seg_voxels

SMALL = ["--shape", "24", "64", "64", "--spacing", "4", "4", "6"]


def _digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def dicom_case(tmp_path_factory):
    out = tmp_path_factory.mktemp("ph")
    assert main(["phantom", str(out), "--seed", "3", "--tumors", "1", "--dicom"] + SMALL) == 0
    return out / "case_00000"


@pytest.fixture(scope="module")
def fg_bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("b") / "fg", fg_bias=8.0).path


def test_segment_dicom_series_writes_a_seg_with_the_seg_nrrd_voxels(dicom_case, fg_bundle, tmp_path):
    assert len(list((dicom_case / "dicom").glob("*.dcm"))) == 24
    before = _digest(dicom_case)
    out = tmp_path / "out"
    assert main(["segment", str(dicom_case / "dicom"), "-o", str(out), "--model", str(fg_bundle), "--device", "cpu",
                 "--dicom-seg", "--no-progress"]) == 0
    assert _digest(dicom_case) == before
    folder = out / "dicom"
    assert sorted(p.name for p in folder.iterdir()) == ["dicom.label.nii.gz", "dicom.preview.png", "dicom.report.json",
                                                        "dicom.seg.dcm", "dicom.seg.nrrd"]
    nrrd = slicerio.read_segmentation(str(folder / "dicom.seg.nrrd"))["voxels"].transpose(2, 1, 0)  # -> [k, j, i]
    seg, ds = seg_voxels(folder / "dicom.seg.dcm", sorted((dicom_case / "dicom").glob("*.dcm")), nrrd.shape)
    assert nrrd.any() and np.array_equal(seg, nrrd)
    report = json.loads((folder / "dicom.report.json").read_text())
    sha = hashlib.sha256((fg_bundle / "manifest.json").read_bytes()).hexdigest()
    assert report["model_sha256"] == sha and report["outputs"]["dicom_seg"] == "dicom.seg.dcm"
    algo = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert sha in str(algo.AlgorithmParameters) and algo.AlgorithmVersion == report["model_version"]


def test_dicom_seg_of_a_nifti_input_is_refused_before_anything_is_written(dicom_case, fg_bundle, tmp_path, caplog):
    out = tmp_path / "out"
    assert main(["segment", str(dicom_case / "imaging.nii.gz"), "-o", str(out), "--model", str(fg_bundle),
                 "--device", "cpu", "--dicom-seg", "--no-progress"]) == 1
    assert "was read as nifti, not as a DICOM series" in caplog.text
    assert not out.exists() or not any(out.iterdir())


def test_dicom_seg_with_the_models_own_label_map_is_refused(dicom_case, tmp_path, caplog):
    assert main(["segment", str(dicom_case / "dicom"), "-o", str(tmp_path / "out"), "--dicom-seg",
                 "--no-postprocess"]) == 2
    assert "--dicom-seg: not with --no-postprocess" in caplog.text and not (tmp_path / "out").exists()
