"""Path classification: image suffixes and DICOM detection."""
from __future__ import annotations

from helpers_ct import IDENTITY, ct_volume, write_dicom_series, write_image
from KidneyTumorSegLib.io.formats import dicom_series, image_suffix, is_dicom_file


def test_image_suffix():
    assert image_suffix("x.NII.GZ") == ".nii.gz" and image_suffix("a/b.v2.mha") == ".mha"
    assert image_suffix("x.txt") == "" and image_suffix(".nii.gz") == ""  # a bare suffix is no image name


def test_dicom_detection(tmp_path):
    folder = write_dicom_series(tmp_path / "series", ct_volume(direction=IDENTITY))
    first = sorted(folder.iterdir())[0]
    renamed = first.rename(folder / "no_extension")
    assert is_dicom_file(renamed)
    assert not is_dicom_file(write_image(ct_volume(), tmp_path / "ct.nrrd"))
    assert not is_dicom_file(tmp_path / "missing.dcm")
    (sid, files), = dicom_series(folder)
    assert sid == "1.2.826.0.1.3680043.2.1125.101" and len(files) == 12
    assert dicom_series(tmp_path / "missing") == [] and dicom_series(tmp_path) == []  # subfolders are not searched
