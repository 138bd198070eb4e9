"""Evaluation: pairing layouts, grid checks, per-case rows, summary and written files."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from KidneyTumorSegLib.evaluation.evaluate import case_id_of, evaluate, pair_cases
from KidneyTumorSegLib.evaluation.metrics import case_metrics
from KidneyTumorSegLib.geometry.volume import InputError

SPACING_XYZ = (0.8, 0.8, 3.0)
ORIGIN = (-100.0, 20.0, 5.0)
DIRECTION = (0, 0, 1, 0, 1, 0, -1, 0, 0)  # KiTS19-like swapped axes


def labels(seed: int, shift: int = 0) -> np.ndarray:
    """A kidney with a tumor on a (k, j, i) = (12, 24, 20) grid; ``shift`` moves the tumor."""
    a = np.zeros((12, 24, 20), np.uint8)
    a[3:9, 5:19, 4:15] = 1
    a[4:7, 8 + shift:12 + shift, 6:10] = 2
    rng = np.random.default_rng(seed)
    a[rng.random(a.shape) > 0.97] = 0
    return a


def save(arr: np.ndarray, path: Path, **geom) -> Path:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(geom.get("spacing", SPACING_XYZ))
    img.SetOrigin(geom.get("origin", ORIGIN))
    img.SetDirection(geom.get("direction", DIRECTION))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


@pytest.fixture
def layouts(tmp_path):
    """References as KiTS case folders; predictions as our output layout and as a flat folder."""
    gt = {f"case_0000{n}": labels(n) for n in range(3)}
    pred = {k: labels(10 + n, shift=n) for n, k in enumerate(gt)}
    for cid, a in gt.items():
        save(a, tmp_path / "kits" / cid / "segmentation.nii.gz")
        (tmp_path / "kits" / cid / "imaging.nii.gz").write_bytes(b"not read")
    for cid, a in list(pred.items())[:2]:  # case_00002 has no prediction
        save(a, tmp_path / "out" / cid / f"{cid}.label.nii.gz")
        (tmp_path / "out" / cid / f"{cid}.seg.nrrd").write_bytes(b"not a label map")
        (tmp_path / "out" / cid / f"{cid}.preview.png").write_bytes(b"")
        save(a, tmp_path / "flat" / f"{cid}.nii.gz")
    save(pred["case_00000"], tmp_path / "flat" / "case_00099.nii.gz")  # no reference
    (tmp_path / "flat" / "case_00000.seg.nrrd").write_bytes(b"skipped")
    return tmp_path, gt, pred


def test_case_ids_from_names():
    assert case_id_of("x/case_00001/segmentation.nii.gz") == "case_00001"
    assert case_id_of("x/case_7/case_7.label.nii.gz") == "case_7"
    assert case_id_of("x/abc_labels.nii") == "abc"
    assert case_id_of("x/case_00003.nrrd") == "case_00003"


def test_pairing_layouts(layouts):
    root, _, _ = layouts
    p = pair_cases(root / "out", root / "kits")
    assert [c for c, _, _ in p.pairs] == ["case_00000", "case_00001"]
    assert p.pairs[0][1] == root / "out" / "case_00000" / "case_00000.label.nii.gz"
    assert p.pairs[0][2] == root / "kits" / "case_00000" / "segmentation.nii.gz"
    assert p.missing_predictions == ["case_00002"] and p.missing_references == []

    p = pair_cases(root / "flat", root / "kits")
    assert [c for c, _, _ in p.pairs] == ["case_00000", "case_00001"]
    assert p.pairs[1][1] == root / "flat" / "case_00001.nii.gz"
    assert p.missing_references == ["case_00099"]

    # one file against a folder, a case folder, and two files whatever their names
    p = pair_cases(root / "flat" / "case_00001.nii.gz", root / "kits")
    assert [c for c, _, _ in p.pairs] == ["case_00001"] and p.missing_predictions == []
    p = pair_cases(root / "out" / "case_00001", root / "kits" / "case_00001")
    assert [c for c, _, _ in p.pairs] == ["case_00001"]
    p = pair_cases(root / "flat" / "case_00099.nii.gz", root / "kits" / "case_00000" / "segmentation.nii.gz")
    assert [(c, a.name, b.name) for c, a, b in p.pairs] == [("case_00099", "case_00099.nii.gz", "segmentation.nii.gz")]


def test_pairing_errors(layouts, tmp_path):
    root, _, _ = layouts
    with pytest.raises(InputError, match="no such file or folder"):
        pair_cases(root / "nope", root / "kits")
    with pytest.raises(InputError, match="no case ids in common"):
        pair_cases(root / "flat" / "case_00099.nii.gz", root / "kits")
    save(labels(0), root / "dup" / "a.nii.gz")
    save(labels(0), root / "dup" / "a_label.nii.gz")
    with pytest.raises(InputError, match="case id 'a' is given twice"):
        pair_cases(root / "dup", root / "kits")


def test_evaluate_rows_summary_and_files(layouts):
    root, gt, pred = layouts
    out_csv, out_json = root / "res" / "cases.csv", root / "res" / "summary.json"
    rows, summary = evaluate(root / "out", root / "kits", out_csv, out_json)
    spacing_zyx = SPACING_XYZ[::-1]
    for row in rows:
        expected = case_metrics(pred[row["case_id"]], gt[row["case_id"]], spacing_zyx)
        for key, val in expected.items():
            assert row[key] == pytest.approx(val, rel=1e-6), key
    assert rows[0]["tumor_dice"] == pytest.approx(1.0, abs=0.1) and rows[1]["tumor_dice"] < 0.9
    assert summary["n_cases"] == 2 and summary["missing_predictions"] == ["case_00002"]
    td = [r["tumor_dice"] for r in rows]
    stats = summary["metrics"]["tumor_dice"]
    assert stats["mean"] == pytest.approx(np.mean(td)) and stats["median"] == pytest.approx(np.median(td))
    assert stats["std"] == pytest.approx(np.std(td, ddof=1)) and stats["n"] == 2

    with open(out_csv, newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["case_id"] for r in table] == ["case_00000", "case_00001"]
    assert float(table[1]["kidney_dice"]) == pytest.approx(rows[1]["kidney_dice"])
    assert json.loads(out_json.read_text())["metrics"]["composite"]["n"] == 2

    with pytest.raises(FileExistsError, match="cases.csv"):
        evaluate(root / "out", root / "kits", out_csv)
    evaluate(root / "out", root / "kits", out_csv, out_json, overwrite=True)


def test_missed_tumor_gives_infinite_hd95_in_csv(tmp_path):
    g = labels(0)
    p = np.where(g == 2, 1, g).astype(np.uint8)
    save(g, tmp_path / "gt" / "c1.nii.gz")
    save(p, tmp_path / "pred" / "c1.nii.gz")
    rows, summary = evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "r.csv", tmp_path / "s.json")
    assert math.isinf(rows[0]["tumor_hd95_mm"])
    assert summary["metrics"]["tumor_hd95_mm"] == {"mean": None, "median": None, "std": None, "n": 0, "n_infinite": 1}
    with open(tmp_path / "r.csv", newline="") as f:
        assert next(csv.DictReader(f))["tumor_hd95_mm"] == "inf"
    assert json.loads((tmp_path / "s.json").read_text())["metrics"]["tumor_hd95_mm"]["mean"] is None


@pytest.mark.parametrize("change,what", [
    (dict(origin=(-100.0, 20.0, 5.01)), "origin"),
    (dict(spacing=(0.8, 0.8, 2.5)), "spacing"),
    (dict(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)), "direction"),
])
def test_grid_mismatch_names_the_case(tmp_path, change, what):
    save(labels(0), tmp_path / "gt" / "case_00005.nii.gz")
    save(labels(0), tmp_path / "pred" / "case_00005.nii.gz", **change)
    with pytest.raises(InputError, match=f"case 'case_00005': prediction and reference are not on the same grid \\({what}"):
        evaluate(tmp_path / "pred", tmp_path / "gt")


def test_grid_within_tolerance_and_shape_mismatch(tmp_path):
    save(labels(0), tmp_path / "gt" / "c.nii.gz")
    save(labels(0), tmp_path / "pred" / "c.nii.gz", origin=(-100.0, 20.0, 5.0004))
    rows, _ = evaluate(tmp_path / "pred", tmp_path / "gt")
    assert rows[0]["composite"] == 1.0
    save(labels(0)[:-1], tmp_path / "pred2" / "c.nii.gz")
    with pytest.raises(InputError, match=r"case 'c': .* \(size"):
        evaluate(tmp_path / "pred2", tmp_path / "gt")
