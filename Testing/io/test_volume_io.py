"""Reading CTs and label maps: formats, geometry, DICOM, KiTS folders, bad input, re-exports.

CT checks are tested in test_validate.py, case discovery in test_cases.py.
"""
from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from helpers_ct import (
    KITS_DIRECTION, assert_same_geometry, ct_array, ct_volume, shared, write_dicom_series, write_image,
    write_image_sitk,
)
from KidneyTumorSegLib.io import cases
from KidneyTumorSegLib.io import formats
from KidneyTumorSegLib.io import validate
from KidneyTumorSegLib.io import volume_io as vio
from KidneyTumorSegLib.geometry.volume import InputError, Volume


# --------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name,fmt", [
    ("ct.nii.gz", "nifti"), ("ct.nii", "nifti"), ("ct.nrrd", "nrrd"), ("ct.nhdr", "nrrd"),
    ("ct.mha", "metaimage"), ("ct.mhd", "metaimage"),
])
def test_file_round_trip_keeps_voxels_dtype_and_geometry(tmp_path, name, fmt):
    vol = ct_volume()
    path = write_image(vol, tmp_path / name)
    back = vio.read_volume(path)
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, vol.array)
    assert_same_geometry(back, vol)
    assert back.meta["source"] == str(path) and back.meta["format"] == fmt
    # Exactly what SimpleITK reports, no reorientation.
    ref = sitk.ReadImage(str(path))
    assert back.direction == ref.GetDirection() and back.origin == ref.GetOrigin()


def test_sitk_volume_helpers_round_trip_exactly():
    vol = ct_volume(direction=KITS_DIRECTION)
    img = vio.volume_to_sitk(vol)
    assert img.GetSize() == vol.shape[::-1]
    assert img.GetSpacing() == vol.spacing and img.GetDirection() == vol.direction
    back = vio.sitk_to_volume(img, {"a": 1})
    np.testing.assert_array_equal(back.array, vol.array)
    assert (back.spacing, back.origin, back.direction, back.meta) == (vol.spacing, vol.origin, vol.direction, {"a": 1})
    # Voxel [k, j, i] sits at the same world point in both conventions.
    k, j, i = 3, 5, 7
    np.testing.assert_allclose(img.TransformIndexToPhysicalPoint((i, j, k)), vol.index_to_world([i, j, k]))
    mask = vio.volume_to_sitk(vol.with_array(vol.array > 0))
    assert mask.GetPixelID() == sitk.sitkUInt8


def test_kits_case_folder(tmp_path):
    case = tmp_path / "case_00007"
    case.mkdir()
    vol = ct_volume(direction=KITS_DIRECTION)
    write_image(vol, case / "imaging.nii.gz")
    labels = (vol.array > 500).astype(np.uint8)
    write_image(vol.with_array(labels), case / "segmentation.nii.gz")
    back = vio.read_volume(case)
    np.testing.assert_array_equal(back.array, vol.array)
    assert_same_geometry(back, vol)
    assert back.meta["format"] == "kits-case" and back.meta["source"] == str(case)
    lab = vio.read_label(case)
    np.testing.assert_array_equal(lab.array, labels)
    assert lab.array.dtype == np.uint8
    assert vio.find_cases(case) == [("case_00007", case)]
    assert vio.find_cases(case / "imaging.nii.gz") == [("case_00007", case / "imaging.nii.gz")]


def test_kits19_swapped_axes_geometry_survives(tmp_path):
    src = shared("kits19-labels") / "case_00000.nii.gz"
    if not src.exists():
        pytest.skip(f"{src} is absent")
    ref = sitk.ReadImage(str(src))
    lab = vio.read_label(src)
    assert (lab.spacing, lab.origin, lab.direction) == (ref.GetSpacing(), ref.GetOrigin(), ref.GetDirection())
    assert lab.shape == ref.GetSize()[::-1]
    assert not np.allclose(lab.direction_matrix, np.eye(3))  # the quirk is really there
    assert set(np.unique(lab.array)) == {0, 1, 2}
    out = tmp_path / "case_00000.nii.gz"
    from KidneyTumorSegLib.io.writers import write_labelmap
    write_labelmap(lab, out)
    back = vio.read_label(out)
    assert (back.spacing, back.origin, back.direction) == (lab.spacing, lab.origin, lab.direction)
    np.testing.assert_array_equal(back.array, lab.array)


def test_read_label_converts_integral_floats_and_rejects_others(tmp_path):
    vol = ct_volume()
    labels = (vol.array > 0).astype(np.float32) * 2
    lab = vio.read_label(write_image(vol.with_array(labels), tmp_path / "l.nrrd"))
    assert lab.array.dtype == np.uint8 and set(np.unique(lab.array)) == {0, 2}
    bad = write_image(vol.with_array(labels + 0.5), tmp_path / "bad.nrrd")
    with pytest.raises(InputError, match="is not a label map: it has non-integer values"):
        vio.read_label(bad)
    neg = write_image(vol.with_array(-labels.astype(np.int16)), tmp_path / "neg.nrrd")
    with pytest.raises(InputError, match="negative values"):
        vio.read_label(neg)
    # Label maps skip the HU checks (a 0/2 image is not a CT).
    with pytest.raises(InputError, match="Hounsfield"):
        vio.read_volume(tmp_path / "l.nrrd")


def test_4d_with_one_singleton_axis_is_squeezed(tmp_path):
    vol = ct_volume(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    img4 = sitk.JoinSeries(vio.volume_to_sitk(vol))
    assert img4.GetDimension() == 4
    back = vio.read_volume(write_image_sitk(img4, tmp_path / "four.mha"))
    np.testing.assert_array_equal(back.array, vol.array)
    assert_same_geometry(back, vol)
    two = sitk.JoinSeries([vio.volume_to_sitk(vol)] * 2)
    with pytest.raises(InputError, match=r"is a 4D image of size \(24, 20, 12, 2\)"):
        vio.read_volume(write_image_sitk(two, tmp_path / "two.mha"))


# --------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------
def test_dicom_series_round_trip(tmp_path):
    vol = ct_volume(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    folder = write_dicom_series(tmp_path / "series", vol)
    back = vio.read_volume(folder)
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.array.dtype == np.int16
    assert_same_geometry(back, vol, atol=1e-4)
    m = back.meta
    assert (m["format"], m["modality"], m["patient_id"], m["series_description"]) == ("dicom", "CT", "KTS-1", "test series")
    assert m["series_instance_uid"] == "1.2.826.0.1.3680043.2.1125.101"
    assert m["study_instance_uid"] == "1.2.826.0.1.3680043.2.1125.1"
    # One file of the series stands for the whole series.
    one = vio.read_volume(sorted(folder.iterdir())[3])
    assert one.shape == vol.shape


def test_folder_with_several_series_reads_the_largest(tmp_path, caplog):
    vol = ct_volume(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    folder = tmp_path / "mixed"
    write_dicom_series(folder, vol.with_array(vol.array[:5]), uid="1.2.826.0.1.3680043.2.1125.102")
    write_dicom_series(folder, vol, uid="1.2.826.0.1.3680043.2.1125.101")
    with caplog.at_level(logging.INFO, logger="KidneyTumorSegLib.io.volume_io"):
        back = vio.read_volume(folder)
    assert back.shape == vol.shape and back.meta["dicom_series"] == 2
    assert back.meta["series_instance_uid"].endswith(".101")
    assert "holds 2 DICOM series; reading the one with most files (12 files" in caplog.text
    # A file of the smaller series selects that series.
    small = vio.read_volume(folder / "s102_000.dcm", validate=False)
    assert small.shape[0] == 5


def test_jpeg2000_dicom_series():
    folder = shared("dicom-ct-series")
    vol = vio.read_volume(folder)
    assert vol.shape == (20, 512, 512)  # 512 x 512 x 20 in (x, y, z)
    np.testing.assert_allclose(vol.spacing, (0.9765625, 0.9765625, 2.0))
    assert vol.array.dtype == np.int16  # unsigned storage, intercept -1024 applied by GDCM
    assert vol.array.min() == -1024 and 1000 < vol.array.max() < 4000
    assert vol.meta["modality"] == "CT" and vol.meta["format"] == "dicom"
    assert vol.meta["warnings"] == []
    assert vio.find_cases(folder) == [("dicom-ct-series", folder)]


def test_real_abdominal_ct_dicom():
    folder = shared("real-abdominal-ct-dicom")
    vol = vio.read_volume(folder)
    assert vol.shape == (134, 512, 512)
    np.testing.assert_allclose(vol.spacing, (1.07421875, 1.07421875, 3.0))
    assert vol.array.min() <= -1000 and vol.array.max() > 1000
    assert vol.meta["patient_id"] == "Pancreas-CT-CB_001" and vol.meta["dicom_files"] == 134
    assert vol.meta["warnings"] == []


# --------------------------------------------------------------------------
# Bad input: every message
# --------------------------------------------------------------------------
def test_missing_path(tmp_path):
    p = tmp_path / "nothere.nii.gz"
    with pytest.raises(InputError, match=f"^cannot read '{p}' as an image: no such file or folder$"):
        vio.read_volume(p)


def test_text_file_renamed_nifti(tmp_path):
    p = tmp_path / "notes.nii.gz"
    p.write_text("this is not an image\n")
    with pytest.raises(InputError) as err:
        vio.read_volume(p)
    assert str(err.value).startswith(f"cannot read '{p}' as an image: not a recognised image format, or a corrupt file")


def test_truncated_gzip_nifti(tmp_path):
    good = write_image(ct_volume(), tmp_path / "good.nii.gz")
    data = good.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match=f"cannot read '{cut}' as an image: the compressed file is truncated or corrupt"):
        vio.read_volume(cut)


def test_corrupt_nrrd_header(tmp_path):
    p = tmp_path / "bad.nrrd"
    p.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 10 10\nencoding: raw\n\n")
    with pytest.raises(InputError, match=f"^cannot read '{p}' as an image: "):
        vio.read_volume(p)


def test_2d_image(tmp_path):
    p = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(ct_array()[0]), str(p))
    with pytest.raises(InputError, match=r"is a 2D image \(size \(24, 20\)\); expected a 3D CT volume"):
        vio.read_volume(p)
    one = write_image(Volume(ct_array()[:1]), tmp_path / "one.nrrd")
    with pytest.raises(InputError, match=r"is a 2D image \(size \(24, 20, 1\)\)"):
        vio.read_volume(one)


def test_rgb_image(tmp_path):
    p = tmp_path / "rgb.nrrd"
    rgb = np.zeros((6, 8, 10, 3), np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(p))
    with pytest.raises(InputError, match=r"is a multi-component image \(3 values per voxel, such as RGB colour\)"):
        vio.read_volume(p)


def test_nan_voxels(tmp_path):
    arr = ct_array().astype(np.float32)
    arr[2, 3, 4] = np.nan
    arr[5, 6, 7] = np.inf
    p = write_image(ct_volume().with_array(arr), tmp_path / "nan.nrrd")  # ITK turns NaN into 0 in NIfTI
    with pytest.raises(InputError, match=r"contains 2 NaN or infinite voxel\(s\); the image is corrupt"):
        vio.read_volume(p)


def test_constant_image(tmp_path):
    p = write_image(ct_volume().with_array(np.full((12, 20, 24), -1024, np.int16)), tmp_path / "flat.nrrd")
    with pytest.raises(InputError, match=f"^'{p}' is empty: every voxel has the value -1024$"):
        vio.read_volume(p)


def test_non_ct_modality(tmp_path):
    vol = ct_volume(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    folder = write_dicom_series(tmp_path / "mr", vol, modality="MR")
    msg = f"'{folder}' is a MR series (DICOM Modality MR), not CT; this tool segments CT scans only"
    with pytest.raises(InputError) as err:
        vio.read_volume(folder)
    assert str(err.value) == msg
    assert vio.read_volume(folder, validate=False).meta["modality"] == "MR"


def test_folder_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(InputError, match="the folder holds no DICOM series and no KiTS imaging.nii.gz"):
        vio.read_volume(tmp_path)


# --------------------------------------------------------------------------
# Module layout
# --------------------------------------------------------------------------
def test_reexports_keep_the_old_import_paths():
    from KidneyTumorSegLib.io.volume_io import case_id_for, find_cases, is_kits_case, validate_ct  # noqa: F401
    assert vio.validate_ct is validate.validate_ct
    assert (vio.find_cases, vio.case_id_for, vio.is_kits_case) == (cases.find_cases, cases.case_id_for, cases.is_kits_case)
    assert (vio.image_suffix, vio.dicom_series) == (formats.image_suffix, formats.dicom_series)
    assert (vio.KITS_IMAGE, vio.KITS_LABEL, vio.MIN_SPACING_MM) == ("imaging.nii.gz", "segmentation.nii.gz", 0.05)
    assert all(hasattr(vio, name) for name in vio.__all__)


@pytest.mark.parametrize("first", ["cases", "validate", "formats", "volume_io"])
def test_modules_import_in_any_order(first):
    # A fresh interpreter, so an import cycle between the split modules would show.
    code = f"import KidneyTumorSegLib.{first}; from KidneyTumorSegLib.io.volume_io import find_cases, validate_ct"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
