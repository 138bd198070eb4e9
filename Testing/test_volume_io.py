"""Reading CTs and label maps: formats, geometry, DICOM, KiTS folders, bad input, case discovery."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from KidneyTumorSegLib import volume_io as vio
from KidneyTumorSegLib.volume import InputError, Volume

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# A rotated, non-unit grid: catches any axis swap or lost direction.
ANGLE = np.deg2rad(20)
ROTATED = (np.cos(ANGLE), -np.sin(ANGLE), 0.0, np.sin(ANGLE), np.cos(ANGLE), 0.0, 0.0, 0.0, 1.0)
KITS_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)  # KiTS19: index axis i (array axis 2) runs along z


def shared(name: str) -> Path:
    p = SHARED / name
    if not p.exists():
        pytest.skip(f"reference data {p} is absent (it sits beside the repository in ../shared/data)")
    return p


def ct_array(shape=(12, 20, 24), seed=0) -> np.ndarray:
    """int16 HU phantom [k, j, i]: air, a soft-tissue body with noise, a bone block."""
    rng = np.random.default_rng(seed)
    arr = np.full(shape, -1000, np.int16)
    k, j, i = shape
    arr[:, j // 4: 3 * j // 4, i // 4: 3 * i // 4] = 40
    arr[:, j // 2: j // 2 + 3, i // 2: i // 2 + 3] = 700
    return (arr + rng.integers(-20, 20, shape)).astype(np.int16)


def ct_volume(**kw) -> Volume:
    geo = dict(spacing=(0.8, 0.7, 2.5), origin=(-120.5, 33.25, -410.0), direction=ROTATED)
    geo.update(kw)
    return Volume(ct_array(), **geo)


def write_image(vol: Volume, path: Path) -> Path:
    sitk.WriteImage(vio.volume_to_sitk(vol), str(path), useCompression=path.suffix != ".nii")
    return path


def write_dicom_series(folder: Path, vol: Volume, modality="CT", uid="1.2.826.0.1.3680043.2.1125.101",
                       description="test series", patient_id="KTS-1") -> Path:
    """A minimal DICOM series written by SimpleITK (GDCM), one file per slice, identity direction."""
    folder.mkdir(parents=True, exist_ok=True)
    img = vio.volume_to_sitk(vol)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    tags = {
        "0008|0060": modality, "0020|000e": uid, "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
        "0008|103e": description, "0010|0020": patient_id, "0020|0037": "1\\0\\0\\0\\1\\0",
        "0018|0050": str(vol.spacing[2]),
    }
    for k in range(vol.shape[0]):
        sl = img[:, :, k]
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        sl.SetMetaData("0020|0032", "\\".join(f"{c:.6f}" for c in img.TransformIndexToPhysicalPoint((0, 0, k))))
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0008|0018", f"{uid}.{k + 1}")
        writer.SetFileName(str(folder / f"s{uid[-3:]}_{k:03d}.dcm"))
        writer.Execute(sl)
    return folder


def assert_same_geometry(a: Volume, b: Volume, atol=1e-5):
    assert a.shape == b.shape
    np.testing.assert_allclose(a.spacing, b.spacing, atol=atol)
    np.testing.assert_allclose(a.origin, b.origin, atol=atol)
    np.testing.assert_allclose(a.direction, b.direction, atol=atol)


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
    from KidneyTumorSegLib.writers import write_labelmap
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


def write_image_sitk(img: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(img, str(path))
    return path


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
    with caplog.at_level(logging.INFO, logger="KidneyTumorSegLib.volume_io"):
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
    # The same check serves volumes from Slicer that carry a modality.
    with pytest.raises(InputError, match="is a PT series"):
        vio.validate_ct(ct_volume(meta={"modality": "PT", "source": "pet"}))


@pytest.mark.parametrize("shift,message", [
    (2000, "its intensities range from {lo} to {hi}, but a CT has air near -1000 HU"),  # raw, no rescale
    (-2000, "its intensities range from {lo} to {hi}, so nothing is as dense as soft tissue"),
])
def test_intensities_not_hu(shift, message):
    arr = ct_array() + shift
    vol = Volume(arr, spacing=(0.8, 0.8, 3.0), meta={"source": "x.nrrd"})
    expected = "'x.nrrd' does not look like a CT in Hounsfield units: " + message.format(lo=arr.min(), hi=arr.max())
    with pytest.raises(InputError) as err:
        vio.validate_ct(vol)
    assert str(err.value).startswith(expected)


def test_unsigned_storage_with_intercept_is_fine():
    # GDCM applies the rescale intercept: uint16 storage arrives as signed HU; a
    # float CT (after a resampling, say) is fine too.
    vol = Volume(ct_array().astype(np.float32), spacing=(0.8, 0.8, 3.0), origin=(1, 2, 3))
    assert vio.validate_ct(vol) == []


@pytest.mark.parametrize("spacing", [(0.8, 0.8, 200.0), (0.001, 0.8, 3.0)])
def test_absurd_spacing(spacing):
    vol = Volume(ct_array(), spacing=spacing, meta={"source": "s.nii"})
    with pytest.raises(InputError, match=r"^'s.nii' has implausible voxel spacing .* mm \(x, y, z\)"):
        vio.validate_ct(vol)


def test_warnings_for_odd_but_usable_scans():
    arr = ct_array()
    arr[arr == arr.max()] = 12000  # one metal voxel
    vol = Volume(arr, spacing=(2.5, 0.8, 8.0), origin=(1, 2, 3), meta={"source": "odd"})
    w = vio.validate_ct(vol)
    assert "'odd': thick slices (8 mm); results are less accurate above 5 mm" in w
    assert "'odd': unusual pixel size 2.5 x 0.8 mm for a CT" in w
    assert any("extreme intensities" in x for x in w)
    # KiTS19 layout: the slice axis is i, found from the direction, not assumed to be k.
    kits = Volume(ct_array(), spacing=(3.0, 0.8, 0.8), direction=KITS_DIRECTION, origin=(1, 2, 3))
    assert not any("thick" in x or "pixel size" in x for x in vio.validate_ct(kits))
    default = Volume(ct_array())
    assert any("default geometry" in x for x in vio.validate_ct(default))


def test_folder_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(InputError, match="the folder holds no DICOM series and no KiTS imaging.nii.gz"):
        vio.read_volume(tmp_path)
    with pytest.raises(InputError, match=f"^no CT images found in '{tmp_path}'"):
        vio.find_cases(tmp_path)


# --------------------------------------------------------------------------
# find_cases
# --------------------------------------------------------------------------
def test_find_cases_in_a_mixed_folder(tmp_path):
    vol = ct_volume()
    write_image(vol, tmp_path / "b_scan.nii.gz")
    write_image(vol, tmp_path / "a_scan.nrrd")
    write_image(vol, tmp_path / "c.mhd")  # its .raw file is not a case
    (tmp_path / "case_00003").mkdir()
    write_image(vol, tmp_path / "case_00003" / "imaging.nii.gz")
    write_dicom_series(tmp_path / "dicom_patient", ct_volume(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)))
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "a_scan.seg.nrrd").write_text("an output, not a case")
    (tmp_path / ".tmp-1234.nii.gz").write_text("a temporary file")
    cases = vio.find_cases(tmp_path)
    assert cases == [
        ("a_scan", tmp_path / "a_scan.nrrd"),
        ("b_scan", tmp_path / "b_scan.nii.gz"),
        ("c", tmp_path / "c.mhd"),
        ("case_00003", tmp_path / "case_00003"),
        ("dicom_patient", tmp_path / "dicom_patient"),
    ]
    assert vio.find_cases(str(tmp_path / "*_scan.*")) == cases[:2]
    assert vio.find_cases(tmp_path / "b_scan.nii.gz") == [("b_scan", tmp_path / "b_scan.nii.gz")]
    assert vio.find_cases(tmp_path / "dicom_patient") == [("dicom_patient", tmp_path / "dicom_patient")]
    for case_id, path in cases:
        assert vio.read_volume(path).shape == vol.shape, case_id


def test_find_cases_disambiguates_ids_and_names_the_spec(tmp_path):
    vol = ct_volume()
    write_image(vol, tmp_path / "x.nii.gz")
    write_image(vol, tmp_path / "x.nrrd")
    write_image(vol, tmp_path / "x_2.mha")
    ids = [c for c, _ in vio.find_cases(tmp_path)]
    assert ids == ["x", "x_3", "x_2"]  # x.nrrd cannot become x_2: that name is taken
    pattern = str(tmp_path / "nothing*.nii.gz")
    with pytest.raises(InputError, match="^" + re.escape(f"no CT images found in '{pattern}'")):
        vio.find_cases(pattern)
    with pytest.raises(InputError, match="no such file or folder: '/no/such/path.nii.gz'"):
        vio.find_cases("/no/such/path.nii.gz")


def test_case_id_for():
    assert vio.case_id_for("data/case_00001.nii.gz") == "case_00001"
    assert vio.case_id_for("data/CT.Scan.NRRD") == "CT.Scan"
    assert vio.case_id_for("a/b.v2.mha") == "b.v2"
    assert vio.image_suffix("x.NII.GZ") == ".nii.gz" and vio.image_suffix("x.txt") == ""


def test_validate_ct_on_a_volume_without_source():
    # Volumes built from Slicer arrays carry no path; messages still read well.
    with pytest.raises(InputError, match="^the image is empty: every voxel has the value 0$"):
        vio.validate_ct(Volume(np.zeros((4, 5, 6), np.int16)))
    assert vio.validate_ct(Volume(ct_array(), spacing=(0.8, 0.8, 3.0), origin=(1, 2, 3))) == []
