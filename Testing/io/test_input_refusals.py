"""Bad inputs refused cleanly (issue 27): NaN/Inf in float NIfTI, DICOM series with missing or uneven slices."""
from __future__ import annotations

import logging
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers_ct import ct_array, shared
from KidneyTumorSegLib.io import volume_io as vio
from KidneyTumorSegLib.geometry.volume import InputError

GEOMETRY = dict(spacing=(0.8, 0.7, 2.5), origin=(-120.5, 33.25, -410.0))


def float_ct_with_bad_voxels() -> np.ndarray:
    """float32 CT [k, j, i] with one NaN, one +inf and one -inf, off every symmetry axis."""
    arr = ct_array().astype(np.float32)
    arr[1, 2, 3], arr[7, 11, 19], arr[10, 0, 5] = np.nan, np.inf, -np.inf
    arr[3, 4, 5] = 0.0  # a genuine 0 HU voxel stays 0
    return arr


def write_float(arr: np.ndarray, path: Path, compress: bool = True) -> Path:
    img = sitk.GetImageFromArray(arr, isVector=False)
    img.SetSpacing(GEOMETRY["spacing"][: img.GetDimension()] + (1.0,) * (img.GetDimension() - 3))
    sitk.WriteImage(img, str(path), useCompression=compress)
    return path


# --------------------------------------------------------------------------
# NaN / Inf in float NIfTI
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii", "ct.mha", "ct.nrrd"])
def test_nan_and_inf_are_refused_alike_in_every_format(tmp_path, name):
    p = write_float(float_ct_with_bad_voxels(), tmp_path / name)
    with pytest.raises(InputError) as err:
        vio.read_volume(p)
    assert str(err.value) == f"'{p}' contains 3 NaN or infinite voxel(s); the image is corrupt"


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii"])
def test_nifti_voxels_read_as_stored(tmp_path, name):
    """Without validation the NaN/Inf voxels come back where they were, the rest unchanged (0 HU included)."""
    arr = float_ct_with_bad_voxels()
    vol = vio.read_volume(write_float(arr, tmp_path / name), validate=False)
    np.testing.assert_array_equal(vol.array, arr)  # NaN == NaN here, inf signs kept
    assert vol.array[3, 4, 5] == 0.0


def test_4d_nifti_with_one_volume_keeps_its_nan(tmp_path):
    arr = float_ct_with_bad_voxels()
    p = write_float(arr[None], tmp_path / "ct4d.nii.gz")  # (x, y, z, 1)
    vol = vio.read_volume(p, validate=False)
    np.testing.assert_array_equal(vol.array, arr)
    with pytest.raises(InputError) as err:
        vio.read_volume(p)
    assert str(err.value) == f"'{p}' contains 3 NaN or infinite voxel(s); the image is corrupt"


def test_scaled_float_nifti_keeps_nan_and_scales_the_rest(tmp_path):
    """scl_slope/scl_inter: the file's finite voxels are scaled, NaN stays NaN (not scl_inter)."""
    arr = float_ct_with_bad_voxels()
    p = write_float(arr, tmp_path / "scaled.nii", compress=False)
    data = bytearray(p.read_bytes())
    data[112:120] = struct.pack("<2f", 2.0, 5.0)
    p.write_bytes(bytes(data))
    vol = vio.read_volume(p, validate=False)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(vol.array, arr * 2.0 + 5.0)


@pytest.mark.parametrize("name", ["nan.nii.gz", "nan.mha"])
def test_all_nan_is_corrupt_not_empty(tmp_path, name):
    arr = np.full((12, 20, 24), np.nan, np.float32)
    p = write_float(arr, tmp_path / name)
    with pytest.raises(InputError) as err:
        vio.read_volume(p)
    assert str(err.value) == f"'{p}' contains 5760 NaN or infinite voxel(s); the image is corrupt"


def test_nan_in_float_nifti_label_is_refused(tmp_path):
    lab = np.zeros((12, 20, 24), np.float32)
    lab[4:8, 5:15, 6:18] = 1.0
    lab[5, 6, 7] = np.nan
    p = write_float(lab, tmp_path / "case_00001.nii.gz")
    with pytest.raises(InputError) as err:
        vio.read_label(p)
    assert str(err.value) == f"'{p}' is not a label map: it contains NaN or infinite values"


def test_float_nifti_without_nan_reads_unchanged(tmp_path):
    arr = ct_array().astype(np.float64) + 0.25
    arr[0, 0, :4] = 0.0
    vol = vio.read_volume(write_float(arr, tmp_path / "ok.nii.gz"))
    np.testing.assert_array_equal(vol.array, arr)
    assert vol.array.dtype == np.float64


# --------------------------------------------------------------------------
# DICOM series: missing and unevenly spaced slices
# --------------------------------------------------------------------------
def real_series_copy(tmp_path: Path, drop_z=None) -> Path:
    """The real JPEG 2000 series copied to tmp, without the slice at z = ``drop_z`` mm."""
    src = shared("dicom-ct-series")
    dst = tmp_path / "series"
    dst.mkdir()
    for f in sorted(src.iterdir()):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(f))
        reader.ReadImageInformation()
        if drop_z is not None and float(reader.GetMetaData("0020|0032").split("\\")[2]) == drop_z:
            continue
        shutil.copy(f, dst / f.name)
    return dst


def test_real_series_with_a_missing_slice_is_refused(tmp_path, capfd):
    folder = real_series_copy(tmp_path, drop_z=-790.5)
    assert len(list(folder.iterdir())) == 19
    with pytest.raises(InputError) as err:
        vio.read_volume(folder)
    assert str(err.value) == (
        f"'{folder}': slices are missing from the DICOM series: the slice positions jump from -792.5 mm to "
        f"-788.5 mm, a gap of 4 mm where the other slices are 2 mm apart (about 1 slice missing there); "
        f"read as one volume it would be on a wrong slice grid"
    )
    assert "Non uniform sampling" not in capfd.readouterr().err  # ITK's raw warning is replaced by the message
    # one file of the series given instead of the folder: the same refusal
    with pytest.raises(InputError, match="slices are missing from the DICOM series"):
        vio.read_volume(sorted(folder.iterdir())[0])


def test_complete_real_series_copy_reads_unchanged(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    vol = vio.read_volume(real_series_copy(tmp_path))
    assert vol.shape == (20, 512, 512)
    np.testing.assert_allclose(vol.spacing, (0.9765625, 0.9765625, 2.0))
    np.testing.assert_allclose(vol.origin, (-249.51171875, -437.51171875, -804.5))
    assert vol.meta["warnings"] == [] and caplog.text == ""


def write_series(folder: Path, z_positions) -> Path:
    """A synthetic axial CT series with the given slice positions (mm), one file per slice."""
    folder.mkdir(parents=True)
    arr = ct_array(shape=(len(z_positions), 20, 24))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, z in enumerate(z_positions):
        sl = sitk.GetImageFromArray(arr[k:k + 1])
        sl.SetSpacing((0.8, 0.8, 1.0))
        for tag, value in {
            "0008|0060": "CT", "0020|000e": "1.2.826.0.1.3680043.2.1125.7", "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|0037": "1\\0\\0\\0\\1\\0", "0020|0032": f"-10\\-20\\{z:.4f}", "0020|0013": str(k + 1),
            "0008|0018": f"1.2.826.0.1.3680043.2.1125.7.{k + 1}",
        }.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"im{k:03d}.dcm"))
        writer.Execute(sl)
    return folder


def test_synthetic_series_with_two_slices_missing(tmp_path):
    z = [2.5 * k for k in range(12) if k not in (5, 6)]
    folder = write_series(tmp_path / "gap", z)
    with pytest.raises(InputError) as err:
        vio.read_volume(folder)
    assert str(err.value) == (
        f"'{folder}': slices are missing from the DICOM series: the slice positions jump from 10 mm to "
        f"17.5 mm, a gap of 7.5 mm where the other slices are 2.5 mm apart (about 2 slices missing there); "
        f"read as one volume it would be on a wrong slice grid"
    )


def test_synthetic_series_with_two_gaps_names_the_first(tmp_path):
    z = [3.0 * k for k in range(14) if k not in (3, 9)]
    folder = write_series(tmp_path / "gaps", z)
    with pytest.raises(InputError) as err:
        vio.read_volume(folder)
    assert str(err.value) == (
        f"'{folder}': slices are missing from the DICOM series: the slice positions jump from 6 mm to "
        f"12 mm, a gap of 6 mm where the other slices are 3 mm apart (about 1 slice missing there; "
        f"1 more gap further on); read as one volume it would be on a wrong slice grid"
    )


@pytest.mark.parametrize("z,lo,hi,med,dev", [
    ([2.5 * k for k in range(7)] + [15.0 + 3.0 * k for k in range(1, 6)], 2.5, 3, 2.5, 1.364),  # two spacings
    ([2.5 * k for k in range(6)] + [12.5] + [2.5 * k for k in range(6, 12)], 0, 2.5, 2.5, 1.25),  # a duplicate
])
def test_unevenly_spaced_series_is_refused(tmp_path, z, lo, hi, med, dev):
    folder = write_series(tmp_path / "uneven", z)
    with pytest.raises(InputError) as err:
        vio.read_volume(folder)
    assert str(err.value) == (
        f"'{folder}': the DICOM series' slices are unevenly spaced: the steps between slice positions range "
        f"from {lo} to {hi} mm (median {med} mm), so a slice lies up to {dev} mm from an even grid; "
        f"read as one volume it would be on a wrong slice grid"
    )


def test_rounded_slice_positions_are_read_with_a_warning(tmp_path, caplog):
    """0.625 mm slices whose positions are rounded to 0.1 mm: uneven by rounding only, read on the even grid."""
    z = [round(0.625 * k, 1) for k in range(16)]
    folder = write_series(tmp_path / "rounded", z)
    vol = vio.read_volume(folder)
    assert vol.shape == (16, 20, 24)
    np.testing.assert_allclose(vol.spacing[2], 9.4 / 15)
    assert f"'{folder}': DICOM slice positions deviate up to 0.067 mm from an even grid of 0.627 mm" in caplog.text


def test_even_synthetic_series_reads_without_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    vol = vio.read_volume(write_series(tmp_path / "even", [-30.0 + 2.5 * k for k in range(12)]))
    assert vol.shape == (12, 20, 24) and vol.spacing[2] == pytest.approx(2.5)
    assert caplog.text == ""
