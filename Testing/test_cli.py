"""The ``kidneytumorseg`` command line, run for real on small phantoms with small bundles."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from KidneyTumorSegLib.cli import main
from KidneyTumorSegLib.config import RuntimeConfig
from KidneyTumorSegLib.pipeline import Segmenter
from KidneyTumorSegLib.events import parse_event
from helpers_bundle import make_tiny_bundle

SMALL = ["--shape", "32", "96", "96", "--spacing", "3.5", "3.5", "5"]


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ph") / "cases"
    assert main(["phantom", str(out), "-n", "1", "--seed", "5", "--tumors", "1"] + SMALL) == 0
    return out


@pytest.fixture(scope="module")
def fg_bundle(tmp_path_factory):
    # networks that answer "foreground" everywhere: a deterministic path through every stage
    return make_tiny_bundle(tmp_path_factory.mktemp("b") / "fg", fg_bias=8.0).path


def test_phantom_command_writes_kits_layout_and_refuses_overwrite(phantom_dir, caplog):
    case = phantom_dir / "case_00000"
    img = sitk.ReadImage(str(case / "imaging.nii.gz"))
    lab = sitk.ReadImage(str(case / "segmentation.nii.gz"))
    assert img.GetSize() == (96, 96, 32) and img.GetSpacing() == pytest.approx((3.5, 3.5, 5.0))
    assert lab.GetSize() == img.GetSize()
    assert set(np.unique(sitk.GetArrayFromImage(lab))) <= {0, 1, 2}
    before = _digest(phantom_dir)
    assert main(["phantom", str(phantom_dir), "-n", "1", "--seed", "5"] + SMALL) == 1
    assert "use --overwrite" in caplog.text
    assert _digest(phantom_dir) == before


def test_segment_writes_all_outputs_on_the_input_grid(phantom_dir, fg_bundle, tmp_path):
    case = phantom_dir / "case_00000"
    before = _digest(phantom_dir)
    events = tmp_path / "events.jsonl"
    out = tmp_path / "out"
    rc = main(["segment", str(case), "-o", str(out), "--model", str(fg_bundle), "--device", "cpu", "--events", str(events),
               "--save-candidates"])
    assert rc == 0
    assert _digest(phantom_dir) == before  # the input is untouched
    folder = out / "case_00000"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["case_00000.candidates.nii.gz", "case_00000.label.nii.gz", "case_00000.preview.png",
                     "case_00000.report.json", "case_00000.seg.nrrd"]
    img = sitk.ReadImage(str(case / "imaging.nii.gz"))
    lab = sitk.ReadImage(str(folder / "case_00000.label.nii.gz"))
    assert lab.GetSize() == img.GetSize()
    assert lab.GetSpacing() == pytest.approx(img.GetSpacing())
    assert lab.GetOrigin() == pytest.approx(img.GetOrigin())
    assert lab.GetDirection() == pytest.approx(img.GetDirection())
    assert lab.GetPixelID() == sitk.sitkUInt8
    report = json.loads((folder / "case_00000.report.json").read_text())
    # the always-foreground test model calls most of the scan kidney: found, and flagged as implausible
    assert report["status"] == "implausible" and report["kidneys"] and report["plausibility"]["reasons"]
    for c in report["tumor_candidates"]:
        assert set(c) >= {"side", "volume_ml", "axial_diameter_mm", "diameter_3d_mm", "mean_probability", "kept"}
    cand = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "case_00000.candidates.nii.gz")))
    assert sorted(set(np.unique(cand)) - {0}) == sorted(c["id"] for c in report["tumor_candidates"])
    import slicerio

    seg = slicerio.read_segmentation(str(folder / "case_00000.seg.nrrd"))
    assert {s["name"] for s in seg["segments"]} == {"Kidney left", "Kidney right", "Kidney tumor"}
    evs = [parse_event(line) for line in events.read_text().splitlines()]
    assert all(e is not None for e in evs)
    kinds = [e["event"] for e in evs]
    assert kinds[0] == "start" and kinds[-1] == "done" and "case_done" in kinds
    stages = [e["stage"] for e in evs if e["event"] == "progress"]
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == ["prepare", "roi", "kidney", "tumor", "candidates", "write"]
    fr = [e["fraction"] for e in evs if e["event"] == "progress"]
    assert fr == sorted(fr) and fr[-1] == pytest.approx(1.0)

    # a second run refuses to overwrite and changes nothing
    snap = _digest(out)
    assert main(["segment", str(case), "-o", str(out), "--model", str(fg_bundle), "--device", "cpu"]) == 1
    assert _digest(out) == snap
    # with --overwrite it runs again and gives the same result
    assert main(["segment", str(case), "-o", str(out), "--model", str(fg_bundle), "--device", "cpu", "--overwrite",
                 "--save-candidates"]) == 0
    again = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "case_00000.label.nii.gz")))
    assert np.array_equal(again, sitk.GetArrayFromImage(lab))


def test_segment_tumor_growth_options(phantom_dir, fg_bundle, tmp_path, caplog):
    case = phantom_dir / "case_00000"
    out = tmp_path / "out"
    assert main(["segment", str(case), "-o", str(out), "--model", str(fg_bundle), "--device", "cpu", "--no-preview",
                 "--tumor-growth", "2"]) == 0
    report = json.loads((out / "case_00000" / "case_00000.report.json").read_text())
    assert report["tumor_growth"] == {"passes": 2, "mm": 13.0}  # the bundle sets no distance: the default
    assert main(["segment", str(case), "-o", str(tmp_path / "bad"), "--model", str(fg_bundle), "--device", "cpu",
                 "--tumor-growth", "9"]) == 2
    assert "tumor_growth_passes must be an integer from 0 to 8, got 9" in caplog.text
    assert not (tmp_path / "bad").exists()
    seg = Segmenter(fg_bundle, RuntimeConfig(device="cpu", tumor_growth_passes=1, tumor_growth_mm=8.0))
    assert (seg.post.tumor_growth_passes, seg.post.tumor_growth_mm) == (1, 8.0)
    assert Segmenter(fg_bundle, RuntimeConfig(device="cpu")).post.tumor_growth_passes == 0


def test_no_kidney_found_writes_nothing(phantom_dir, tmp_path, caplog):
    bundle = make_tiny_bundle(tmp_path / "bg", fg_bias=-8.0).path
    out = tmp_path / "out"
    rc = main(["segment", str(phantom_dir / "case_00000"), "-o", str(out), "--model", str(bundle), "--device", "cpu"])
    assert rc == 1
    assert "no kidney found" in caplog.text
    assert not out.exists() or not any(out.rglob("*.nii.gz"))


def test_bad_input_gives_clear_message(tmp_path, fg_bundle, caplog):
    bad = tmp_path / "notct.nii.gz"
    bad.write_text("this is not an image")
    rc = main(["segment", str(bad), "-o", str(tmp_path / "out"), "--model", str(fg_bundle), "--device", "cpu"])
    assert rc == 1
    assert "cannot read" in caplog.text and "notct.nii.gz" in caplog.text
    assert not any((tmp_path / "out").rglob("*.nii.gz")) if (tmp_path / "out").exists() else True


def test_missing_model_is_reported(tmp_path, phantom_dir, caplog):
    rc = main(["segment", str(phantom_dir / "case_00000"), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "nomodel")])
    assert rc == 2
    assert "model bundle folder not found" in caplog.text


def test_info_shows_model_card_and_device(fg_bundle, capsys):
    assert main(["info", "--model", str(fg_bundle), "--device", "cpu"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["device"] == "cpu"
    assert info["model"]["name"] == "tiny-test"
    assert set(info["model"]["stages"]) == {"roi", "kidney", "tumor"}


def test_evaluate_command(phantom_dir, tmp_path, capsys):
    gt = phantom_dir / "case_00000" / "segmentation.nii.gz"
    csv = tmp_path / "m.csv"
    assert main(["evaluate", str(gt), str(gt), "--csv", str(csv)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert csv.exists()
    text = json.dumps(summary)
    assert "kidney_dice" in text


def test_console_script_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "KidneyTumorSegLib", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "kidneytumorseg" in out.stdout


def test_phantom_command_labels_cysts_when_asked(tmp_path):
    out = tmp_path / "cyst"
    assert main(["phantom", str(out), "--seed", "3", "--tumors", "0", "--cysts", "2", "--cyst-label",
                 "--randomize-intensity"] + SMALL) == 0
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case_00000" / "segmentation.nii.gz")))
    info = json.loads((out / "case_00000" / "phantom_info.json").read_text())
    assert set(np.unique(lab)) == {0, 1, 3}  # kidney and cysts, no tumor
    assert len(info["cysts"]) == 2 and info["cyst_label"] is True and info["randomize_intensity"] is True
    # the same phantom without --cyst-label: the cysts are background, nothing else changes
    plain = tmp_path / "plain"
    assert main(["phantom", str(plain), "--seed", "3", "--tumors", "0", "--cysts", "2", "--randomize-intensity"] + SMALL) == 0
    lab0 = sitk.GetArrayFromImage(sitk.ReadImage(str(plain / "case_00000" / "segmentation.nii.gz")))
    np.testing.assert_array_equal(lab0, np.where(lab == 3, 0, lab))


def test_phantom_command_refuses_too_many_cysts_and_writes_nothing(tmp_path, caplog):
    out = tmp_path / "bad"
    assert main(["phantom", str(out), "--cysts", "11"] + SMALL) == 1
    assert "n_cysts must be an integer from 0 to 10, got 11" in caplog.text
    assert not out.exists()  # no empty case folder left behind
