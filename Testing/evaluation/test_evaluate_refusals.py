"""Evaluation refuses label maps that are not KiTS labels (issue 27), and writes nothing then."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from helpers_ct import ct_array
from KidneyTumorSegLib.cli import main
from KidneyTumorSegLib.evaluation.evaluate import evaluate
from KidneyTumorSegLib.evaluation.metrics import case_metrics
from KidneyTumorSegLib.geometry.volume import InputError

SPACING_XYZ = (0.8, 0.8, 3.0)
ALLOWED = "values other than 0 (background), 1 (kidney), 2 (tumor) and 3 (cyst)"


def labels(shape=(12, 20, 24)) -> np.ndarray:
    a = np.zeros(shape, np.uint8)
    a[3:9, 5:15, 4:18] = 1
    a[4:7, 8:12, 6:10] = 2
    return a


def save(arr: np.ndarray, path):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING_XYZ)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def with_values(dtype, *values) -> np.ndarray:
    a = labels().astype(dtype)
    for n, v in enumerate(values):
        a[0, 0, n] = v
    return a


@pytest.mark.parametrize("arr,count,shown", [
    (with_values(np.uint8, 7, 255, 7), 3, "7, 255"),
    (with_values(np.int16, -1, 4), 2, "-1, 4"),
    (with_values(np.float32, 1.5, 2.25), 2, "1.5, 2.25"),
    (with_values(np.float32, np.nan, 2.5), 2, "2.5, nan"),
    (with_values(np.uint16, 4, 5, 6, 7, 8, 9, 10), 7, "4, 5, 6, 7, 8 and 2 more"),
])
def test_reference_with_other_values_is_refused(tmp_path, arr, count, shown):
    gt = save(arr, tmp_path / "gt" / "case_00001.nii.gz")
    save(labels(), tmp_path / "pred" / "case_00001.nii.gz")
    out_csv, out_json = tmp_path / "res" / "m.csv", tmp_path / "res" / "s.json"
    with pytest.raises(InputError) as err:
        evaluate(tmp_path / "pred", tmp_path / "gt", out_csv, out_json)
    assert str(err.value) == (
        f"case 'case_00001': the reference '{gt}' is not a KiTS label map: {count} voxel(s) have {ALLOWED}: {shown}"
    )
    assert not (tmp_path / "res").exists()


def test_ct_given_as_reference_is_refused_by_the_command(tmp_path, caplog):
    """The issue's example: a CT as the reference was scored (tumor 10987 mL, rc 0); now rc 1 and no files."""
    ct = ct_array()
    gt = save(ct, tmp_path / "gt" / "case_00001.nii.gz")
    save(labels(), tmp_path / "pred" / "case_00001.nii.gz")
    summary = tmp_path / "summary.json"
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--summary", str(summary)]) == 1
    values = np.unique(ct[(ct < 0) | (ct > 3)])
    shown = ", ".join(str(v) for v in values[:5]) + f" and {values.size - 5} more"
    n_bad = int(np.count_nonzero((ct < 0) | (ct > 3)))
    assert (f"case 'case_00001': the reference '{gt}' is not a KiTS label map: {n_bad} voxel(s) have {ALLOWED}: "
            f"{shown}") in caplog.text
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["case_00001.nii.gz"]  # no metrics.csv
    assert not summary.exists()


def test_bad_prediction_is_refused_after_good_cases(tmp_path):
    """A bad second case: nothing is written, although the first was scored."""
    for cid in ("case_00001", "case_00002"):
        save(labels(), tmp_path / "gt" / f"{cid}.nii.gz")
    save(labels(), tmp_path / "pred" / "case_00001.nii.gz")
    pred = save(with_values(np.uint8, 9), tmp_path / "pred" / "case_00002.nii.gz")
    out_csv = tmp_path / "m.csv"
    with pytest.raises(InputError) as err:
        evaluate(tmp_path / "pred", tmp_path / "gt", out_csv, tmp_path / "s.json")
    assert str(err.value) == (
        f"case 'case_00002': the prediction '{pred}' is not a KiTS label map: 1 voxel(s) have {ALLOWED}: 9"
    )
    assert not out_csv.exists() and not (tmp_path / "s.json").exists()


def test_kits23_cyst_and_float_integer_labels_are_scored(tmp_path):
    """Label 3 (KiTS21/23 cyst) counts in the "tumor" (masses, label > 1) region as before; 0.0/1.0/2.0 floats are labels."""
    gt = labels()
    gt[8, 14, 14:17] = 3
    pred = labels().astype(np.float32)
    save(gt, tmp_path / "gt" / "c.nii.gz")
    save(pred, tmp_path / "pred" / "c.nii.gz")
    rows, summary = evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "m.csv")
    expected = case_metrics(labels(), gt, SPACING_XYZ[::-1])
    assert {k: rows[0][k] for k in expected} == pytest.approx(expected)
    assert rows[0]["gt_tumor_ml"] == pytest.approx((3 * 4 * 4 + 3) * 0.8 * 0.8 * 3.0 / 1000)
    assert summary["n_cases"] == 1 and (tmp_path / "m.csv").exists()
