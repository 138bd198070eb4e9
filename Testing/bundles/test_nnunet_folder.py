"""nnU-Net folders on disk: resolving folders, folds and zips, finding installed models, loading checkpoints safely."""
import json
import pathlib
import zipfile

import numpy as np
import pytest
import torch

from KidneyTumorSegLib.bundles.nnunet_folder import (NnunetFolderError, discover_models, looks_like_nnunet, resolve,
                                             search_roots, unpack_zip)
from KidneyTumorSegLib.engine.nnunet_model import NnunetError, load_checkpoint


def _model(ds: pathlib.Path, conf: str, folds=("0", "1"), ckpt="checkpoint_final.pth") -> pathlib.Path:
    m = ds / f"nnUNetTrainer__nnUNetPlans__{conf}"
    m.mkdir(parents=True)
    (m / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "kidney": 1, "tumor": 2}}))
    (m / "plans.json").write_text("{}")
    for f in folds:
        (m / f"fold_{f}").mkdir()
        torch.save({"network_weights": {"w": torch.zeros(1)}}, m / f"fold_{f}" / ckpt)
    return m


def test_a_trained_model_folder_uses_every_fold_present_or_those_asked_for(tmp_path):
    m = _model(tmp_path / "Dataset220_KiTS2023", "3d_fullres", folds=("0", "2", "all"))
    f = resolve(m)
    assert (f.configuration, f.folds, f.checkpoint, f.dataset) == ("3d_fullres", ("0", "2"), "checkpoint_final.pth",
                                                                  "Dataset220_KiTS2023")
    assert resolve(m, folds=["all"]).folds == ("all",)
    with pytest.raises(NnunetFolderError, match=r"fold\(s\) 1 have no checkpoint_final.pth \(folds present: 0, 2, all\)"):
        resolve(m, folds=[0, 1])


def test_checkpoint_best_is_taken_when_training_did_not_finish(tmp_path):
    m = _model(tmp_path / "Dataset001_X", "2d", folds=("0",), ckpt="checkpoint_best.pth")
    assert resolve(m).checkpoint == "checkpoint_best.pth"


def test_a_dataset_folder_picks_a_configuration_and_says_which(tmp_path, caplog):
    ds = tmp_path / "Dataset220_KiTS2023"
    _model(ds, "2d")
    _model(ds, "3d_lowres")
    _model(ds, "3d_fullres")
    _model(ds, "3d_cascade_fullres")
    caplog.set_level("INFO")
    assert resolve(ds).configuration == "3d_fullres"
    assert "using the 3d_fullres model (also present: 3d_cascade_fullres, 3d_lowres, 2d" in caplog.text
    casc = resolve(ds, configuration="3d_cascade_fullres")
    assert casc.previous is not None and casc.previous.configuration == "3d_lowres"
    assert len(casc.files()) == 2 * (2 + 2)  # two JSONs and two checkpoints, for each of the two stages
    with pytest.raises(NnunetFolderError, match="no 3d_fullres_x model"):
        resolve(ds, configuration="3d_fullres_x")


def test_the_cascade_needs_its_lowres_model(tmp_path):
    m = _model(tmp_path / "Dataset001_X", "3d_cascade_fullres")
    with pytest.raises(NnunetFolderError, match="3d_cascade_fullres needs the 3d_lowres model beside it"):
        resolve(m)


def test_an_exported_zip_is_unpacked_once_and_resolved(tmp_path):
    m = _model(tmp_path / "src" / "Dataset001_X", "3d_fullres", folds=("0",))
    z = tmp_path / "export.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(m.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(tmp_path / "src").as_posix())
    f = resolve(z, cache=tmp_path / "cache")
    assert f.configuration == "3d_fullres" and f.folds == ("0",)
    assert unpack_zip(z, tmp_path / "cache") == f.path.parent.parent  # the same folder, not unpacked again
    assert looks_like_nnunet(z) and looks_like_nnunet(f.path) and looks_like_nnunet(f.path.parent)


def test_a_zip_member_leaving_the_folder_is_refused(tmp_path):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(NnunetFolderError, match="would be written outside the folder"):
        unpack_zip(z, tmp_path / "cache")
    assert not (tmp_path / "outside.txt").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []


def test_installed_models_are_found_in_totalsegmentator_home_and_nnunet_results(tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "ts"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    _model(tmp_path / "ts" / "nnunet" / "results" / "Dataset297_TotalSegmentator_total_3mm_1559subj", "3d_fullres",
           folds=("0",))
    _model(tmp_path / "results" / "Dataset220_KiTS2023", "3d_lowres", folds=("0", "1"))
    assert [s for s, _ in search_roots()] == ["TotalSegmentator", "nnUNet_results"]
    found = discover_models()
    assert [(m["source"], m["dataset"], m["configuration"], m["folds"]) for m in found] == [
        ("TotalSegmentator", "Dataset297_TotalSegmentator_total_3mm_1559subj", "3d_fullres", "0"),
        ("nnUNet_results", "Dataset220_KiTS2023", "3d_lowres", "0,1")]


class _SideEffect:
    """Unpickling this would create a file (what a malicious checkpoint would do with os.system)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_a_checkpoint_with_a_pickled_object_is_refused_without_running_it(tmp_path):
    flag = tmp_path / "ran"
    bad = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {"w": torch.zeros(2)}, "extra": _SideEffect(flag)}, bad)
    with pytest.raises(NnunetError, match="refused: the checkpoint holds Python objects beyond tensors"):
        load_checkpoint(bad)
    assert not flag.exists()


def test_an_nnunet_style_checkpoint_with_numpy_scalars_loads(tmp_path):
    good = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {"w": torch.ones(2)}, "trainer_name": "nnUNetTrainer",
                "logging": {"ema_fg_dice": [np.float64(0.5), np.float32(0.25)], "mean_fg_dice": [np.array(0.1)]},
                "inference_allowed_mirroring_axes": (0, 1, 2), "current_epoch": 1}, good)
    ckpt = load_checkpoint(good)
    assert ckpt["logging"]["ema_fg_dice"][0] == 0.5 and torch.equal(ckpt["network_weights"]["w"], torch.ones(2))
    with pytest.raises(NnunetError, match="not an nnU-Net v2 checkpoint"):
        torch.save({"state_dict": {}}, good)
        load_checkpoint(good)


def test_a_checkpoint_saved_under_numpy_1_loads(tmp_path):
    """TotalSegmentator's and most published checkpoints were saved with numpy 1.x, whose pickles name
    numpy.core.multiarray.scalar (numpy 2 moved it to numpy._core)."""
    import zipfile

    src, old = tmp_path / "new.pth", tmp_path / "old.pth"
    torch.save({"network_weights": {"w": torch.ones(1)}, "logging": {"dice": [np.float64(0.75)]}}, src)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(old, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(item, data)
    assert load_checkpoint(old)["logging"]["dice"] == [0.75]
