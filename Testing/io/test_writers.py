"""Output writers: atomic and non-overwriting files, label maps, Slicer .seg.nrrd, JSON, CSV, terminology."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from KidneyTumorSegLib.findings import terminology as T
from KidneyTumorSegLib.io.atomic import atomic_write, atomic_write_text, check_not_input, full_suffix
from KidneyTumorSegLib.geometry.volume import Volume
from KidneyTumorSegLib.io.volume_io import read_label
from KidneyTumorSegLib.io.jsonfile import read_json, write_json
from KidneyTumorSegLib.io.writers import ijk_to_lps, write_csv, write_labelmap, write_seg_nrrd

ANGLE = np.deg2rad(30)
ROTATED = (np.cos(ANGLE), 0.0, np.sin(ANGLE), 0.0, 1.0, 0.0, -np.sin(ANGLE), 0.0, np.cos(ANGLE))
KITS_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)


def label_volume(direction=ROTATED, shape=(10, 14, 18), seed=1) -> Volume:
    """Labels [k, j, i]: 1 kidney left, 2 kidney right, 3 tumor, in separate blocks."""
    rng = np.random.default_rng(seed)
    arr = np.zeros(shape, np.uint8)
    arr[2:7, 3:10, 1:6] = 1
    arr[2:8, 3:10, 11:17] = 2
    arr[4:6, 5:8, 12:15] = 3
    arr[rng.random(shape) < 0.01] = 0  # not just boxes
    return Volume(arr, spacing=(0.75, 0.9, 3.0), origin=(-101.5, 40.25, -330.0), direction=direction)


def leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-"))


# --------------------------------------------------------------------------
# atomic
# --------------------------------------------------------------------------
def test_full_suffix():
    assert full_suffix("a/case.nii.gz") == ".nii.gz"
    assert full_suffix("case.seg.nrrd") == ".seg.nrrd"
    assert full_suffix("r.v1.json") == ".json"
    assert full_suffix("x.NII.GZ") == ".NII.GZ"
    assert full_suffix("noext") == ""


def test_atomic_write_keeps_suffix_and_leaves_no_temp(tmp_path):
    seen = []

    def writer(tmp):
        seen.append(tmp)
        sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkUInt8), tmp)

    out = atomic_write(tmp_path / "sub" / "mask.nii.gz", writer)
    assert out == tmp_path / "sub" / "mask.nii.gz" and out.is_file()
    name = Path(seen[0]).name
    assert Path(seen[0]).parent == out.parent and name.startswith(".tmp-") and name.endswith(".nii.gz")
    assert out.read_bytes()[:2] == b"\x1f\x8b"  # gzip: SimpleITK saw the .nii.gz suffix
    assert leftovers(out.parent) == []


def test_atomic_write_refuses_to_overwrite(tmp_path):
    out = atomic_write_text(tmp_path / "r.txt", "first")
    with pytest.raises(FileExistsError) as err:
        atomic_write_text(out, "second")
    assert str(err.value) == f"output exists: {out} (use --overwrite to replace it)"
    assert out.read_text() == "first"
    atomic_write_text(out, "second", overwrite=True)
    assert out.read_text() == "second"
    assert leftovers(tmp_path) == []


def test_atomic_write_does_not_clobber_a_file_that_appears_meanwhile(tmp_path):
    out = tmp_path / "race.txt"

    def writer(tmp):
        Path(tmp).write_text("mine")
        out.write_text("someone else's")

    with pytest.raises(FileExistsError, match="output exists"):
        atomic_write(out, writer)
    assert out.read_text() == "someone else's"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_atomic_write_cleans_up_on_failure(tmp_path, exc):
    out = tmp_path / "seg.nii.gz"
    out_old = tmp_path / "old.txt"
    out_old.write_text("keep")

    def failing(tmp):
        Path(tmp).write_bytes(b"half a file")
        raise exc

    with pytest.raises(type(exc)):
        atomic_write(out, failing)
    with pytest.raises(type(exc)):
        atomic_write(out_old, failing, overwrite=True)
    assert not out.exists() and out_old.read_text() == "keep"
    assert leftovers(tmp_path) == []


def test_atomic_write_requires_the_writer_to_write(tmp_path):
    with pytest.raises(OSError, match="produced no file"):
        atomic_write(tmp_path / "x.json", lambda tmp: None)
    assert list(tmp_path.iterdir()) == []


def test_check_not_input(tmp_path):
    ct = tmp_path / "ct.nii.gz"
    ct.write_bytes(b"x")
    case = tmp_path / "case_00001"
    case.mkdir()
    (case / "segmentation.nii.gz").write_bytes(b"truth")
    link = tmp_path / "link.nii.gz"
    os.symlink(ct, link)
    for out, inp in [(ct, ct), (tmp_path / "." / "ct.nii.gz", ct), (link, ct),
                     (case / "segmentation.nii.gz", case), (case, case)]:
        with pytest.raises(ValueError, match="would overwrite the input"):
            check_not_input(out, [tmp_path / "other.nii.gz", inp])
    check_not_input(tmp_path / "ct_seg.nii.gz", [ct, case])
    check_not_input(case / "prediction.nii.gz", [case])  # a new file beside the inputs is fine


# --------------------------------------------------------------------------
# label map NIfTI
# --------------------------------------------------------------------------
def test_write_labelmap_round_trip(tmp_path):
    lab = label_volume()
    kits = lab.with_array(np.minimum(lab.array, 2).astype(np.int64))
    out = write_labelmap(kits, tmp_path / "case.nii.gz")
    img = sitk.ReadImage(str(out))
    assert img.GetPixelID() == sitk.sitkUInt8
    back = read_label(out)
    np.testing.assert_array_equal(back.array, kits.array)
    assert back.same_grid(lab, tol=1e-5)
    with pytest.raises(FileExistsError, match="output exists"):
        write_labelmap(kits, out)
    write_labelmap(kits.with_array(np.zeros(kits.shape, np.uint8)), out, overwrite=True)
    assert read_label(out).array.max() == 0
    with pytest.raises(ValueError, match="within 0..255"):
        write_labelmap(kits.with_array(kits.array * 200), tmp_path / "big.nii.gz")
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------
# Slicer .seg.nrrd
# --------------------------------------------------------------------------
@pytest.mark.parametrize("direction", [ROTATED, KITS_DIRECTION], ids=["rotated", "kits19-swapped-axes"])
def test_seg_nrrd_round_trip_through_slicerio(tmp_path, direction):
    lab = label_volume(direction=direction)
    out = write_seg_nrrd(lab, tmp_path / "case.seg.nrrd", T.SEG_NRRD_SEGMENTS)
    seg = slicerio.read_segmentation(str(out))

    # Voxels come back in slicerio's (i, j, k) order, the same everywhere.
    np.testing.assert_array_equal(seg["voxels"], lab.array.transpose(2, 1, 0))
    np.testing.assert_allclose(seg["ijkToLPS"], ijk_to_lps(lab), atol=1e-9)
    ijk = np.array([5, 7, 3])
    np.testing.assert_allclose((seg["ijkToLPS"] @ np.append(ijk, 1))[:3], lab.index_to_world(ijk), atol=1e-9)

    by_value = {s["labelValue"]: s for s in seg["segments"]}
    assert sorted(by_value) == [1, 2, 3]
    for value, definition in T.SEG_NRRD_SEGMENTS.items():
        s = by_value[value]
        assert (s["id"], s["name"], s["layer"]) == (definition.segment_id, definition.name, 0)
        np.testing.assert_allclose(s["color"], np.array(definition.color_rgb) / 255, atol=1e-6)
        assert s["terminology"] == definition.terminology()
        mask = slicerio.segment_mask(seg, definition.name)
        np.testing.assert_array_equal(mask, (lab.array == value).transpose(2, 1, 0))

    # An independent reader (ITK's NRRD IO) sees the same grid and voxels as the input volume.
    img = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), lab.array)
    np.testing.assert_allclose(img.GetSpacing(), lab.spacing, atol=1e-9)
    np.testing.assert_allclose(img.GetOrigin(), lab.origin, atol=1e-9)
    np.testing.assert_allclose(img.GetDirection(), lab.direction, atol=1e-9)


def test_seg_nrrd_header_has_slicer_terminology_tags(tmp_path):
    out = write_seg_nrrd(label_volume(), tmp_path / "a.seg.nrrd", T.SEG_NRRD_SEGMENTS)
    header = out.read_bytes().split(b"\n\n", 1)[0].decode()
    for n, definition in enumerate(T.SEG_NRRD_SEGMENTS.values()):
        assert f"Segment{n}_Tags:=TerminologyEntry:{definition.terminology_string()}|" in header
        assert f"Segment{n}_Name:={definition.name}" in header
    assert "space: left-posterior-superior" in header
    assert "Segmentation_MasterRepresentation:=Binary labelmap" in header


def test_seg_nrrd_keeps_empty_segments_and_rejects_unknown_labels(tmp_path):
    lab = label_volume()
    no_tumor = lab.with_array(np.where(lab.array == 3, 2, lab.array).astype(np.uint8))
    seg = slicerio.read_segmentation(str(write_seg_nrrd(no_tumor, tmp_path / "n.seg.nrrd", T.SEG_NRRD_SEGMENTS)))
    assert [s["name"] for s in seg["segments"]] == ["Kidney left", "Kidney right", "Kidney tumor"]
    assert not slicerio.segment_mask(seg, "Kidney tumor").any()
    with pytest.raises(ValueError, match=r"label values \[3\] have no segment definition"):
        write_seg_nrrd(lab, tmp_path / "u.seg.nrrd", {1: T.KIDNEY_LEFT, 2: T.KIDNEY_RIGHT})
    with pytest.raises(FileExistsError, match="output exists"):
        write_seg_nrrd(no_tumor, tmp_path / "n.seg.nrrd", T.SEG_NRRD_SEGMENTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.seg.nrrd"]


# --------------------------------------------------------------------------
# terminology
# --------------------------------------------------------------------------
def test_terminology_strings_match_slicer_and_slicerio():
    assert T.KIDNEY_LEFT.terminology_string() == (
        "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
        "~SCT^64033007^Kidney~SCT^7771000^Left~Anatomic codes - DICOM master list~^^~^^"
    )
    assert T.KIDNEY_RIGHT.terminology()["typeModifier"] == ["SCT", "24028007", "Right"]
    assert T.KIDNEY_TUMOR.terminology_string() == (
        "Segmentation category and type - 3D Slicer General Anatomy list~SCT^49755003^Morphologically Altered Structure"
        "~SCT^108369006^Neoplasm~^^~Anatomic codes - DICOM master list~SCT^64033007^Kidney~^^"
    )
    for d in (T.KIDNEY_LEFT, T.KIDNEY_RIGHT, T.KIDNEY, T.KIDNEY_TUMOR, T.KIDNEY_CYST):
        s = d.terminology_string()
        assert slicerio.segmentation.terminology_entry_to_string(d.terminology()) == s
        assert slicerio.segmentation.terminology_entry_from_string(s) == d.terminology()
    assert T.KIDNEY_LEFT.color_rgb == (185, 102, 83) and T.KIDNEY_TUMOR.color_rgb != T.KIDNEY_LEFT.color_rgb
    assert [d.name for d in T.SEG_NRRD_SEGMENTS.values()] == ["Kidney left", "Kidney right", "Kidney tumor"]


# --------------------------------------------------------------------------
# JSON and CSV
# --------------------------------------------------------------------------
def test_write_json(tmp_path):
    report = {"case": "case_00001", "volume_ml": np.float32(12.5), "count": np.int64(2),
              "diameter_mm": float("nan"), "spacing": (0.8, 0.8, 3.0), "array": np.arange(3),
              "path": tmp_path / "x.nii.gz", "nested": [{"inf": float("inf")}], "name": "Niere ü"}
    out = write_json(report, tmp_path / "report.json")
    back = json.loads(out.read_text(encoding="utf-8"))
    assert back == {"case": "case_00001", "volume_ml": 12.5, "count": 2, "diameter_mm": None,
                    "spacing": [0.8, 0.8, 3.0], "array": [0, 1, 2], "path": str(tmp_path / "x.nii.gz"),
                    "nested": [{"inf": None}], "name": "Niere ü"}
    with pytest.raises(FileExistsError, match="output exists"):
        write_json({}, out)
    write_json({"a": 1}, out, overwrite=True)
    assert json.loads(out.read_text()) == {"a": 1}
    with pytest.raises(TypeError):
        write_json({"bad": object()}, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists() and leftovers(tmp_path) == []
    assert read_json(out) == {"a": 1}


def test_read_json_names_what_is_missing_or_broken(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        read_json(tmp_path / "splits.json", "split file")
    assert str(e.value) == f"split file not found: {tmp_path / 'splits.json'}"
    (tmp_path / "bad.json").write_text('{"a": 1,}')
    with pytest.raises(ValueError) as e:
        read_json(tmp_path / "bad.json")
    assert str(e.value).startswith(f"{tmp_path / 'bad.json'}: not valid JSON: Expecting property name")


def test_write_csv(tmp_path):
    rows = [{"case": "a", "kidney_ml": 150.25, "tumor_ml": np.float64(3.5)},
            {"case": "b", "kidney_ml": 140.0, "tumor_ml": float("nan"), "note": "no, tumor"}]
    out = write_csv(rows, tmp_path / "summary.csv")
    with open(out, newline="") as f:
        back = list(csv.DictReader(f))
    assert list(back[0]) == ["case", "kidney_ml", "tumor_ml", "note"]
    assert back == [{"case": "a", "kidney_ml": "150.25", "tumor_ml": "3.5", "note": ""},
                    {"case": "b", "kidney_ml": "140.0", "tumor_ml": "", "note": "no, tumor"}]
    with pytest.raises(FileExistsError, match="output exists"):
        write_csv(rows, out)
    write_csv([], out, overwrite=True, fieldnames=["case"])
    assert out.read_text() == "case\n"
    with pytest.raises(ValueError):
        write_csv(rows, tmp_path / "cols.csv", fieldnames=["case"])
    assert not (tmp_path / "cols.csv").exists()
