"""Case discovery: files, KiTS folders, DICOM series folders, globs, id clashes, messages."""
from __future__ import annotations

import re

import pytest

from helpers_ct import IDENTITY, ct_volume, write_dicom_series, write_image
from KidneyTumorSegLib.io.cases import case_id_for, find_cases, is_kits_case
from KidneyTumorSegLib.geometry.volume import InputError
from KidneyTumorSegLib.io.volume_io import read_volume


def test_find_cases_in_a_mixed_folder(tmp_path):
    vol = ct_volume()
    write_image(vol, tmp_path / "b_scan.nii.gz")
    write_image(vol, tmp_path / "a_scan.nrrd")
    write_image(vol, tmp_path / "c.mhd")  # its .raw file is not a case
    (tmp_path / "case_00003").mkdir()
    write_image(vol, tmp_path / "case_00003" / "imaging.nii.gz")
    write_dicom_series(tmp_path / "dicom_patient", ct_volume(direction=IDENTITY))
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "a_scan.seg.nrrd").write_text("an output, not a case")
    (tmp_path / ".tmp-1234.nii.gz").write_text("a temporary file")
    cases = find_cases(tmp_path)
    assert cases == [
        ("a_scan", tmp_path / "a_scan.nrrd"),
        ("b_scan", tmp_path / "b_scan.nii.gz"),
        ("c", tmp_path / "c.mhd"),
        ("case_00003", tmp_path / "case_00003"),
        ("dicom_patient", tmp_path / "dicom_patient"),
    ]
    assert find_cases(str(tmp_path / "*_scan.*")) == cases[:2]
    assert find_cases(tmp_path / "b_scan.nii.gz") == [("b_scan", tmp_path / "b_scan.nii.gz")]
    assert find_cases(tmp_path / "dicom_patient") == [("dicom_patient", tmp_path / "dicom_patient")]
    assert is_kits_case(tmp_path / "case_00003") and not is_kits_case(tmp_path / "dicom_patient")
    for case_id, path in cases:
        assert read_volume(path).shape == vol.shape, case_id


def test_find_cases_disambiguates_ids_and_names_the_spec(tmp_path):
    vol = ct_volume()
    write_image(vol, tmp_path / "x.nii.gz")
    write_image(vol, tmp_path / "x.nrrd")
    write_image(vol, tmp_path / "x_2.mha")
    ids = [c for c, _ in find_cases(tmp_path)]
    assert ids == ["x", "x_3", "x_2"]  # x.nrrd cannot become x_2: that name is taken
    pattern = str(tmp_path / "nothing*.nii.gz")
    with pytest.raises(InputError, match="^" + re.escape(f"no CT images found in '{pattern}'")):
        find_cases(pattern)
    with pytest.raises(InputError, match="no such file or folder: '/no/such/path.nii.gz'"):
        find_cases("/no/such/path.nii.gz")


def test_folder_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(InputError, match=f"^no CT images found in '{tmp_path}'"):
        find_cases(tmp_path)


def test_case_id_for(tmp_path):
    assert case_id_for("data/case_00001.nii.gz") == "case_00001"
    assert case_id_for("data/CT.Scan.NRRD") == "CT.Scan"
    assert case_id_for("a/b.v2.mha") == "b.v2"
    case = tmp_path / "case_00042"
    case.mkdir()
    write_image(ct_volume(), case / "imaging.nii.gz")
    assert case_id_for(case / "imaging.nii.gz") == "case_00042"  # a KiTS image takes its folder's name
