"""ktstrain.nnunet_export: KiTS case folders -> an nnU-Net v2 raw dataset (label tables, geometry, no overwrite)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ktstrain.nnunet_export import TOTALSEG, dataset_json, export_nnunet_dataset

SHAPE = (20, 20, 20)  # (k, j, i)
SPACING = (4.0, 3.0, 5.0)  # (x, y, z) mm: spacing of index axes i, j, k
# KiTS19 stores the slice axis first in i order: index axis k (array axis 0) runs along world x
KITS_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0)


def _write_case(root: Path, name: str, image: np.ndarray, label: np.ndarray, direction=None) -> Path:
    case = root / name
    case.mkdir(parents=True)
    for arr, fname in ((image, "imaging.nii.gz"), (label, "segmentation.nii.gz")):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(SPACING)
        img.SetOrigin((-30.0, 12.5, 100.0))
        if direction is not None:
            img.SetDirection(direction)
        sitk.WriteImage(img, str(case / fname), True)
    return case


def _world_x(img: sitk.Image, mask: np.ndarray) -> np.ndarray:
    return np.array([img.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))[0]
                     for k, j, i in zip(*np.nonzero(mask))])


def _case_arrays(x_axis: int = 2):
    """A body (0 HU) in air, off the grid's centre, with a kidney on each side of its midline along ``x_axis``.

    Along that array axis: body 3..18 (midline 10.5), kidney + tumor at 5..7, kidney + cyst at 13..15.
    """
    image = np.full(SHAPE, -1000, np.int16)
    image[:, 2:18, 3:19] = 0
    label = np.zeros(SHAPE, np.uint8)
    label[4:8, 6:10, 5:8] = 1
    label[5:7, 7:9, 6] = 2
    label[4:8, 6:10, 13:16] = 1
    label[5:7, 7:9, 14] = 3
    return np.moveaxis(image, 2, x_axis).copy(), np.moveaxis(label, 2, x_axis).copy()


@pytest.fixture
def cases(tmp_path):
    root = tmp_path / "kits"
    _write_case(root, "case_00000", *_case_arrays())
    _write_case(root, "case_00001", *_case_arrays(0), KITS_DIRECTION)
    return root


def _read(path: Path):
    img = sitk.ReadImage(str(path))
    return img, sitk.GetArrayFromImage(img)


@pytest.mark.parametrize("table, expect", [
    ("kits19", {0: 0, 1: 1, 2: 2, 3: 1}),  # cysts become kidney, as in KiTS19
    ("kits21", {0: 0, 1: 1, 2: 2, 3: 3}),  # values kept; the regions are in dataset.json
])
def test_kits_tables_keep_the_geometry_and_map_the_values(cases, tmp_path, table, expect):
    out = export_nnunet_dataset(cases, tmp_path / "raw", 7, "KiTS", table)
    assert out == tmp_path / "raw" / "Dataset007_KiTS"
    _, src_label = _read(cases / "case_00001" / "segmentation.nii.gz")
    src_img, src_arr = _read(cases / "case_00001" / "imaging.nii.gz")
    img, arr = _read(out / "imagesTr" / "case_00001_0000.nii.gz")
    lab, lab_arr = _read(out / "labelsTr" / "case_00001.nii.gz")
    assert np.array_equal(arr, src_arr) and arr.dtype == src_arr.dtype
    for a in (img, lab):
        assert a.GetSpacing() == src_img.GetSpacing() and a.GetOrigin() == src_img.GetOrigin()
        assert a.GetDirection() == src_img.GetDirection()
    lut = np.array([expect[v] for v in range(4)], np.uint8)
    assert lab_arr.dtype == np.uint8 and np.array_equal(lab_arr, lut[src_label])
    meta = json.loads((out / "dataset.json").read_text())
    assert meta == dataset_json(table, 2, "Dataset007_KiTS")
    assert meta["channel_names"] == {"0": "CT"} and meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    if table == "kits21":
        assert meta["labels"] == {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}
        assert meta["regions_class_order"] == [1, 3, 2]
    else:
        assert meta["labels"] == {"background": 0, "kidney": 1, "tumor": 2} and "regions_class_order" not in meta


@pytest.mark.parametrize("case", ["case_00000", "case_00001"])
def test_totalseg_splits_kidneys_and_cysts_at_the_bodys_midline_in_world_x(cases, tmp_path, case):
    out = export_nnunet_dataset(cases, tmp_path / "raw", 291, "TotalSegmentator_part1_organs", "totalseg")
    _, src = _read(cases / case / "segmentation.nii.gz")
    lab, arr = _read(out / "labelsTr" / f"{case}.nii.gz")
    assert set(np.unique(arr).tolist()) == {0, TOTALSEG["kidney_right"], TOTALSEG["kidney_left"],
                                            TOTALSEG["kidney_cyst_left"]}  # the cyst is in the left kidney
    assert np.array_equal(arr > 0, src > 0)  # tumours stay inside their kidney
    left = np.isin(arr, [TOTALSEG["kidney_left"], TOTALSEG["kidney_cyst_left"]])
    right = np.isin(arr, [TOTALSEG["kidney_right"], TOTALSEG["kidney_cyst_right"]])
    assert _world_x(lab, left).min() > _world_x(lab, right).max()  # LPS: +x is the patient's left
    assert (arr[src == 3] == TOTALSEG["kidney_cyst_left"]).all() and (arr[src == 2] == TOTALSEG["kidney_right"]).all()
    names = json.loads((out / "dataset.json").read_text())["labels"]
    assert names["spleen"] == 1 and names["kidney_right"] == 2 and names["kidney_left"] == 3 and names["liver"] == 5
    assert names["kidney_cyst_left"] == 23 and names["kidney_cyst_right"] == 24 and len(names) == 25


def test_an_existing_dataset_or_dataset_number_is_never_overwritten(cases, tmp_path):
    raw = tmp_path / "raw"
    first = export_nnunet_dataset(cases, raw, 40, "KiTS19")
    before = sorted(p.name for p in (first / "labelsTr").iterdir())
    with pytest.raises(FileExistsError, match="Dataset040_KiTS19"):
        export_nnunet_dataset(cases, raw, 40, "KiTS19")
    with pytest.raises(FileExistsError, match="id 040 is taken"):
        export_nnunet_dataset(cases, raw, 40, "Other")
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset040_KiTS19"]
    assert sorted(p.name for p in (first / "labelsTr").iterdir()) == before


def test_a_failed_export_leaves_nothing_behind(cases, tmp_path):
    _write_case(cases, "case_00002", _case_arrays()[0], np.full(SHAPE, 7, np.uint8))
    raw = tmp_path / "raw"
    with pytest.raises(ValueError, match=r"label values \[7\]"):
        export_nnunet_dataset(cases, raw, 1, "Bad")
    assert list(raw.iterdir()) == []
    with pytest.raises(ValueError, match="table must be one of"):
        export_nnunet_dataset(cases, raw, 2, "X", "kits23")
    with pytest.raises(ValueError, match="dataset_id"):
        export_nnunet_dataset(cases, raw, 1000, "X")


def test_nnunets_own_integrity_check_accepts_the_dataset(cases, tmp_path):
    pytest.importorskip("nnunetv2", reason="the [nnunet] extra (nnunetv2) is not installed")
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    for i, table in enumerate(("kits21", "totalseg")):  # regions; 24 organ labels (kits19: a subset of kits21)
        verify_dataset_integrity(str(export_nnunet_dataset(cases, tmp_path / "raw", 100 + i, "T", table)), 1)
