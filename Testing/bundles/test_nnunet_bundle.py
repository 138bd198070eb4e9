"""Bundles referencing nnU-Net models: import-model's manifest, SHA-256 checks, mixed stages, kidneys-only models."""
import json

import pytest
import torch

from KidneyTumorSegLib.bundles.bundle import BundleError, default_bundle_path, load_bundle
from KidneyTumorSegLib.cli import main
from KidneyTumorSegLib.bundles.nnunet_bundle import bundle_from_nnunet, import_model, model_bundle

KITS = {"labels": {"background": 0, "kidney": 1, "tumor": 2}}
TOTALSEG = {"labels": {"background": 0, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 5,
                       "kidney_cyst_left": 23, "kidney_cyst_right": 24}}


def _model(root, dataset, labels, conf="3d_fullres", folds=("0",)):
    m = root / dataset / f"nnUNetTrainer__nnUNetPlans__{conf}"
    m.mkdir(parents=True)
    (m / "dataset.json").write_text(json.dumps(labels))
    (m / "plans.json").write_text("{}")
    (m / "progress.png").write_bytes(b"not read by inference")
    for f in folds:
        (m / f"fold_{f}").mkdir()
        torch.save({"network_weights": {"w": torch.zeros(1)}}, m / f"fold_{f}" / "checkpoint_final.pth")
    return m


def test_a_kits_model_alone_is_a_complete_bundle_and_totalsegmentator_gives_kidneys_only(tmp_path):
    kits = bundle_from_nnunet(_model(tmp_path, "Dataset220_KiTS2023", KITS))
    assert sorted(kits.stages) == ["kidney", "tumor"]
    assert kits.stages["kidney"].nnunet.orientation == "IPL" and not kits.stages["tumor"].mask_outside
    ts = bundle_from_nnunet(_model(tmp_path, "Dataset291_TotalSegmentator_part1_organs", TOTALSEG))
    assert sorted(ts.stages) == ["kidney"] and ts.stages["kidney"].nnunet.orientation == "RAS"
    assert ts.limitations == "this model segments no kidney tumors: kidneys only"


def test_import_model_records_every_file_read_and_a_changed_file_fails_the_check(tmp_path):
    ts = _model(tmp_path, "Dataset291_TotalSegmentator_part1_organs", TOTALSEG)
    kits = _model(tmp_path, "Dataset220_KiTS2023", KITS, folds=("0", "1"))
    out = tmp_path / "bundle"
    b = import_model(out, {"roi": str(ts), "kidney": str(ts), "tumor": str(kits)}, name="ts+kits")
    manifest = json.loads((out / "manifest.json").read_text())
    tumor = next(s for s in manifest["stages"] if s["role"] == "tumor")
    assert sorted(tumor["nnunet"]["files"]) == sorted([
        f"{kits.name}/dataset.json", f"{kits.name}/plans.json", f"{kits.name}/fold_0/checkpoint_final.pth",
        f"{kits.name}/fold_1/checkpoint_final.pth"])  # every file inference reads, not the training log
    assert tumor["nnunet"]["folds"] == ["0", "1"] and tumor["weights"] == []
    assert load_bundle(out).name == "ts+kits" and b.stages["roi"].nnunet.orientation == "RAS"
    (kits / "progress.png").write_bytes(b"changed: not a file inference reads")
    load_bundle(out)
    ck = kits / "fold_1" / "checkpoint_final.pth"
    ck.write_bytes(ck.read_bytes() + b"\0")
    with pytest.raises(BundleError, match=r"checkpoint_final.pth: SHA-256 mismatch .*the file is corrupt or was replaced"):
        load_bundle(out)


def test_import_model_takes_a_stage_of_our_own_bundle_with_its_weights(tmp_path):
    if not (default_bundle_path() / "manifest.json").is_file():
        pytest.skip("the shipped model is not installed")
    kits = _model(tmp_path, "Dataset220_KiTS2023", KITS)
    out = tmp_path / "b"
    b = import_model(out, {"roi": str(default_bundle_path()), "kidney": str(kits), "tumor": str(kits)})
    assert b.stages["roi"].nnunet is None and (out / "roi_0.safetensors").is_file()
    assert b.stages["kidney"].nnunet is not None
    assert len(load_bundle(out).load_state_dicts("roi")) == 1


def test_import_model_cli_refuses_to_overwrite_and_needs_a_kidney_stage(tmp_path, capsys):
    kits = _model(tmp_path, "Dataset220_KiTS2023", KITS)
    out = tmp_path / "b"
    assert main(["import-model", "-o", str(out), "--kidney", str(kits), "--tumor", str(kits)]) == 0
    before = (out / "manifest.json").read_bytes()
    assert main(["import-model", "-o", str(out), "--kidney", str(kits)]) == 2
    assert (out / "manifest.json").read_bytes() == before
    with pytest.raises(SystemExit):
        main(["import-model", "-o", str(tmp_path / "c"), "--tumor", str(kits)])
    assert not (tmp_path / "c").exists()


def test_a_model_without_kidney_label_is_refused_at_segment_time(tmp_path, caplog):
    liver = _model(tmp_path, "Dataset003_Liver", {"labels": {"background": 0, "liver": 1, "cancer": 2}})
    with pytest.raises(ValueError, match=r"the model has no kidney label \(its labels: background \(0\), liver \(1\), "
                                         r"cancer \(2\)\)"):
        model_bundle(liver)
    out = tmp_path / "out"
    ct = tmp_path / "ct.nii.gz"
    ct.write_bytes(b"")  # never read: the model is refused first
    assert main(["segment", str(ct), "-o", str(out), "--model", str(liver)]) == 2
    assert "the model has no kidney label" in caplog.text and not out.exists()


def test_no_postprocess_is_refused_up_front_for_a_model_that_is_not_one_nnunet_model(tmp_path, caplog):
    if not (default_bundle_path() / "manifest.json").is_file():
        pytest.skip("the shipped model is not installed")
    ct = tmp_path / "ct.nii.gz"
    ct.write_bytes(b"")  # never read
    out = tmp_path / "out"
    assert main(["segment", str(ct), "-o", str(out), "--no-postprocess"]) == 2
    assert "--no-postprocess needs an nnU-Net model given as --model" in caplog.text and not out.exists()


def test_a_model_used_by_two_stages_is_hashed_once_on_import_and_on_load(tmp_path, monkeypatch):
    import KidneyTumorSegLib.bundles.bundle as bundle_mod

    kits = _model(tmp_path, "Dataset220_KiTS2023", KITS, folds=("0", "1"))
    hashed = []
    real = bundle_mod.sha256_file
    monkeypatch.setattr(bundle_mod, "sha256_file", lambda p: hashed.append(p) or real(p))
    monkeypatch.setattr("KidneyTumorSegLib.bundles.nnunet_bundle.sha256_file", bundle_mod.sha256_file)
    import_model(tmp_path / "b", {"kidney": str(kits), "tumor": str(kits)})
    # 4 files inference reads: hashed once when recorded, once when save_bundle loads the new bundle back
    assert len(hashed) == 8 and len(set(hashed)) == 4
