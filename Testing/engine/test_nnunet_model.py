"""Genuine nnU-Net v2 models (planned, preprocessed and trained here by nnU-Net's own code, see nnunet_fixture)
run by our pipeline: the same label maps as nnU-Net's predictor, the cascade on their probabilities, safety.

The models are trained for a few iterations only: what is checked is that we run them exactly as nnU-Net
does, not that they segment well. The folders are built once per machine under ``.cache/`` (ignored).
"""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("nnunetv2", reason="the [nnunet] extra (nnunetv2) is not installed")

from nnunet_fixture import build_nnunet_results, export_zip, predict_with_nnunet, trainer_lookup  # noqa: E402

from KidneyTumorSegLib.cli import main  # noqa: E402
from KidneyTumorSegLib.config import RuntimeConfig  # noqa: E402
from KidneyTumorSegLib.bundles.nnunet_folder import resolve  # noqa: E402
from KidneyTumorSegLib.engine.nnunet_model import NnunetError, open_model  # noqa: E402
from KidneyTumorSegLib.engine.nnunet_stage import to_orientation  # noqa: E402
from KidneyTumorSegLib.pipeline import Segmenter  # noqa: E402
from KidneyTumorSegLib.io.volume_io import read_volume  # noqa: E402

CACHE = Path(__file__).resolve().parents[2] / ".cache" / "nnunet-fixture"


@pytest.fixture(scope="session")
def results():
    return {kind: build_nnunet_results(CACHE, kind) for kind in ("kits19", "kits21", "totalseg")}


@pytest.fixture(scope="session")
def ct(tmp_path_factory):
    """A phantom CT never used in training, stored as KiTS stores its scans (orientation IPL)."""
    from KidneyTumorSegLib.phantom import make_phantom
    from KidneyTumorSegLib.io.volume_io import volume_to_sitk

    ph = make_phantom(424242, shape=(40, 64, 64), spacing=(5.0, 5.0, 5.0), n_tumors=1, n_cysts=1)
    img = sitk.DICOMOrient(volume_to_sitk(ph.image), "IPL")
    path = tmp_path_factory.mktemp("ct") / "case_0000.nii.gz"
    sitk.WriteImage(img, str(path))
    return path


def _model_folder(results, kind, configuration):
    return next(results[kind].glob(f"*__{configuration}"))


def _nnunet_reference(model, folds, ct, tmp_path):
    out = tmp_path / "nnunet_out" / "case.nii.gz"
    predict_with_nnunet(model, folds, ct, out, disable_tta=True)
    return sitk.ReadImage(str(out))


@pytest.mark.parametrize("kind, configuration, folds", [
    ("kits19", "3d_fullres", ["0"]),
    ("kits19", "3d_fullres", ["0", "1"]),       # an ensemble of folds
    ("kits19", "2d", ["0"]),
    ("kits19", "3d_lowres", ["0"]),
    ("kits19", "3d_cascade_fullres", ["0"]),    # lowres, then fullres with the lowres segmentation
    ("kits21", "3d_fullres", ["0"]),            # region-based, sigmoid outputs
    ("totalseg", "3d_fullres", ["0"]),          # TotalSegmentator-style labels, trained without mirroring
])
def test_no_postprocess_writes_the_label_map_nnunet_writes(results, ct, tmp_path, kind, configuration, folds):
    model = _model_folder(results, kind, configuration)
    ref = _nnunet_reference(model, folds, ct, tmp_path)
    out = tmp_path / "ours"
    # nnUNetv2_predict -device cpu runs torch on every CPU; a convolution's float sums depend on the thread
    # count, and an argmax near a tie with them (this model is barely trained): the same threads here
    rc = main(["segment", str(ct), "-o", str(out), "--model", str(model), "--folds", *folds, "--fast",
               "--no-postprocess", "--device", "cpu", "--no-progress", "--threads", str(os.cpu_count())])
    assert rc == 0
    ours = sitk.ReadImage(str(out / "case_0000" / "case_0000.label.nii.gz"))
    a, b = sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(ref)
    assert a.shape == b.shape and np.array_equal(a, b), f"{int((a != b).sum())} voxels differ"
    assert ours.GetDirection() == pytest.approx(ref.GetDirection()) and ours.GetOrigin() == pytest.approx(ref.GetOrigin())
    report = json.loads((out / "case_0000" / "case_0000.report.json").read_text())
    assert report["postprocess"] is False and report["label_values"]["0"] == "background"
    assert (out / "case_0000" / "case_0000.seg.nrrd").is_file()
    assert not (out / "case_0000" / "case_0000.preview.png").exists()


def test_a_dataset_folder_and_an_exported_zip_give_the_same_answer(results, ct, tmp_path):
    zpath = tmp_path / "export.zip"
    export_zip(results["kits19"], "3d_fullres", ["0"], zpath)
    a = tmp_path / "a"
    b = tmp_path / "b"
    args = ["--folds", "0", "--no-postprocess", "--device", "cpu", "--no-progress"]
    assert main(["segment", str(ct), "-o", str(a), "--model", str(results["kits19"]), "--configuration",
                 "3d_fullres", *args]) == 0
    assert main(["segment", str(ct), "-o", str(b), "--model", str(zpath), *args]) == 0
    la = sitk.GetArrayFromImage(sitk.ReadImage(str(a / "case_0000" / "case_0000.label.nii.gz")))
    lb = sitk.GetArrayFromImage(sitk.ReadImage(str(b / "case_0000" / "case_0000.label.nii.gz")))
    assert np.array_equal(la, lb)


@pytest.mark.parametrize("kind", ["kits19", "kits21", "totalseg"])
def test_the_cascades_stage_probabilities_are_nnunets_own(results, ct, kind):
    """The kidney role's probability a cascade stage gets, on the canonical grid, is the sum of nnU-Net's own
    probabilities of the kidney labels (or its kidney region) of the scan as stored, reoriented."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    model_dir = _model_folder(results, kind, "3d_fullres")
    folder = resolve(model_dir, folds=["0"])
    model = open_model(folder, device="cpu")
    stored = read_volume(ct)
    ref = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=__import__("torch").device("cpu"),
                          allow_tqdm=False)
    with trainer_lookup():  # nnU-Net's own lookup imports every trainer module (torchvision may be broken here)
        ref.initialize_from_trained_model_folder(str(model_dir), ["0"])  # trusted: a folder this suite built
    _, probs = ref.predict_single_npy_array(stored.array.astype(np.float32)[None],
                                            {"spacing": list(stored.spacing_zyx)}, None, None, True)
    kidney_ref = probs[list(model.roles.channels["kidney"])].sum(0)
    ours = model.role_probabilities(stored.array, stored.spacing_zyx)[0]
    np.testing.assert_allclose(ours, kidney_ref, atol=2e-5)
    # through the cascade's stage adapter: the canonical grid, reoriented to the model's orientation
    from KidneyTumorSegLib.geometry.records import canonical_reorient
    from KidneyTumorSegLib.engine.nnunet_stage import ModelRuns, NnunetStage

    reo = canonical_reorient(stored)
    can = reo.volume(stored)
    arr, _ = to_orientation(can.array, can.spacing_zyx, "IPL")
    assert np.array_equal(arr, stored.array)  # the CT is stored as IPL: the model sees exactly the file's array
    fg = NnunetStage(ModelRuns(model, "IPL"), "kidney").predict(can)[1]
    np.testing.assert_allclose(reo.invert(fg), kidney_ref, atol=2e-5)


def test_a_full_kits_model_runs_once_for_both_stages_and_stage4_judges_its_tumors(results, ct):
    seg = Segmenter(str(_model_folder(results, "kits19", "3d_fullres")),
                    RuntimeConfig(device="cpu", tumor_growth_passes=0), nnunet={"folds": ["0"]})
    assert sorted(seg.stages) == ["kidney", "tumor"]
    result = seg.segment(read_volume(ct))
    runs = list(seg.nnunet_runs.values())
    assert len(runs) == 1
    # the model is barely trained: whether it finds a kidney depends on its training; both outcomes are exact
    if result.status != "no_kidney":  # found (plausible or not)
        assert runs[0].runs == 1  # stage 3's kidney boxes answered from stage 2's run on the whole scan
        assert all(0.0 <= c.mean_probability <= 1.0 for c in result.tumors)
        assert all(c.kept == (c.rejected_because == "") for c in result.tumors)
    else:
        assert result.messages == ["no kidney found: the kidney stage found no kidney in the region of interest"]


class _Recording:
    """Wraps a model's role_probabilities to record the shape of every input it is run on."""

    def __init__(self, model):
        self.model, self.shapes = model, []
        self.roles = model.roles

    def role_probabilities(self, image, spacing, roles=("kidney", "tumor")):
        self.shapes.append(image.shape)
        return self.model.role_probabilities(image, spacing, roles)


def test_a_bundle_of_two_models_runs_the_tumor_model_only_on_each_kidneys_box(results, ct, tmp_path):
    """Stage 2 from one model, stage 3 from another (here a KiTS21 region model), as import-model writes."""
    kid, tum = _model_folder(results, "kits19", "3d_fullres"), _model_folder(results, "kits21", "3d_fullres")
    out = tmp_path / "bundle"
    assert main(["import-model", "-o", str(out), "--kidney", str(kid), "--tumor", str(tum), "--folds", "0"]) == 0
    seg = Segmenter(str(out), RuntimeConfig(device="cpu", tumor_growth_passes=0))
    assert len(seg.nnunet_runs) == 2
    tumor_runs = seg.predictors["tumor"].runs
    tumor_runs.model = recorder = _Recording(tumor_runs.model)
    image = read_volume(ct)
    result = seg.segment(image)
    if result.status != "no_kidney":  # found (plausible or not)
        assert len(recorder.shapes) == len(result.kidneys)  # once per kidney, on its box
        assert seg.predictors["kidney"].runs.runs == 1
    else:
        assert recorder.shapes == [] and result.messages[0].startswith("no kidney found")


def test_a_changed_checkpoint_is_refused_at_load(results, tmp_path):
    src = _model_folder(results, "kits19", "3d_fullres")
    copy = tmp_path / src.parent.name / src.name
    shutil.copytree(src, copy)
    out = tmp_path / "bundle"
    assert main(["import-model", "-o", str(out), "--kidney", str(copy), "--tumor", str(copy), "--folds", "0"]) == 0
    ck = copy / "fold_0" / "checkpoint_final.pth"
    ck.write_bytes(ck.read_bytes()[:-1] + bytes([ck.read_bytes()[-1] ^ 1]))
    from KidneyTumorSegLib.bundles.bundle import BundleError

    with pytest.raises(BundleError, match="SHA-256 mismatch"):
        Segmenter(str(out), RuntimeConfig(device="cpu"))


def test_a_custom_trainer_or_network_class_is_not_imported(results, tmp_path):
    src = _model_folder(results, "kits19", "3d_fullres")
    copy = tmp_path / src.parent.name / src.name
    shutil.copytree(src, copy)
    plans = json.loads((copy / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "os.system"
    (copy / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(NnunetError, match="network class 'os.system' is not from dynamic_network_architectures"):
        open_model(resolve(copy, folds=["0"]))
