"""ktstrain.export: bundles from tiny CPU training runs load and segment, ensembles keep each member's
normalisation, and export's --tta and --post settings are validated."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from KidneyTumorSegLib.bundles.bundle import load_bundle
from KidneyTumorSegLib.cli import main as kts_main
from ktstrain.checkpoint import load_checkpoint
from ktstrain.cli import main as train_main
from ktstrain.export import export_bundle
from ktstrain.train import train_stage

from helpers_train import tiny_config

# module-scoped fixtures from helpers_train (this module gets its own copy): pytest finds them by these names


def test_ensemble_members_keep_their_own_normalisation(phantoms, runs, tmp_path):
    """Folds see different cases, so their z-score statistics differ: the ensemble records each member's
    (member_norm), and each member's prediction inside the ensemble is what it gives alone with its own
    statistics, so the ensemble is the mean of the members alone."""
    import numpy as np

    from KidneyTumorSegLib.config import RuntimeConfig
    from KidneyTumorSegLib.engine.inference import NetworkPredictor
    from KidneyTumorSegLib.engine.networks import Renormalised

    torch.set_num_threads(1)
    _, done = runs
    other = train_stage(tiny_config("kidney", epochs=1), phantoms, tmp_path / "kidney_f1", tmp_path / "cache",
                        fold=1, device="cpu", show_progress=False)
    st0 = load_checkpoint(done["kidney"] / "checkpoint_final.pt")["stage"]
    st1 = load_checkpoint(other / "checkpoint_final.pt")["stage"]
    n0, n1 = (st0["norm_mean"], st0["norm_std"]), (st1["norm_mean"], st1["norm_std"])
    assert n0 != n1
    b = export_bundle({"kidney": [done["kidney"], other], "tumor": [done["tumor"]]}, tmp_path / "ens")
    stage = b.stage("kidney")
    assert stage.member_norm == (n0, n1) and (stage.norm_mean, stage.norm_std) == n0
    assert load_bundle(b.path).stage("kidney").member_norm == (n0, n1)  # survives the manifest
    assert b.stage("tumor").member_norm == ()
    models = b.build_models("kidney")
    assert not isinstance(models[0], Renormalised) and isinstance(models[1], Renormalised)
    alone = [export_bundle({"kidney": [r], "tumor": [done["tumor"]]}, tmp_path / f"alone{i}")
             for i, r in enumerate((done["kidney"], other))]
    rng = np.random.default_rng(0)
    image = rng.normal(40.0, 300.0, size=(20, 40, 36)).astype(np.float32)  # HU, some of it clipped
    cpu = RuntimeConfig(device="cpu")
    each = [NetworkPredictor(a.stage("kidney"), a.build_models("kidney"), cpu).predict(image) for a in alone]
    both = NetworkPredictor(stage, models, cpu).predict(image)
    np.testing.assert_allclose(both, (each[0] + each[1]) / 2, rtol=0, atol=2e-5)
    assert np.abs(each[0] - each[1]).max() > 1e-3  # the two members really differ
    # a stage whose member_norm does not match its weight files is refused, naming the manifest
    manifest = json.loads((b.path / "manifest.json").read_text())
    manifest["stages"][0]["member_norm"] = [list(n0)]
    (b.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="lists 1 member_norm entries for 2 weight files"):
        load_bundle(b.path)


def test_export_bundle_loads_and_segments(runs, phantoms, tmp_path):
    _, done = runs
    bundle = export_bundle({"roi": [done["roi"]], "kidney": [done["kidney"]], "tumor": [done["tumor"], done["tumor"]]},
                           tmp_path / "model", which="final", data="4 tiny phantoms")
    b = load_bundle(bundle.path)
    assert len(b.stages["tumor"].weights) == 2
    # a periodic checkpoint by epoch (the tiny runs keep their last three: epochs 1-3, 0-based)
    e1 = export_bundle({"roi": [done["roi"]], "kidney": [done["kidney"]], "tumor": [done["tumor"]]},
                       tmp_path / "model_e1", which="epoch0001")
    assert e1.provenance["members"]["kidney"][0]["epoch"] == 2
    with pytest.raises(ValueError, match="or epochNNNN, got 'epoch1'"):
        export_bundle({"kidney": [done["kidney"]], "tumor": [done["tumor"]]}, tmp_path / "bad", which="epoch1")
    assert b.provenance["members"]["kidney"][0]["epoch"] == 4
    assert len(b.provenance["commit"]) >= 7
    case = Path(phantoms[0].image_path).parent
    rc = kts_main(["segment", str(case), "-o", str(tmp_path / "out"), "--model", str(b.path), "--device", "cpu"])
    # a 4-epoch model may or may not find a kidney; either way the command must end cleanly
    assert rc in (0, 1)
    if rc == 0:
        assert (tmp_path / "out" / case.name / f"{case.name}.label.nii.gz").exists()


def test_export_sets_a_stages_validated_tta(runs, tmp_path, caplog):
    _, done = runs
    b = export_bundle({"roi": [done["roi"]], "kidney": [done["kidney"]], "tumor": [done["tumor"]]}, tmp_path / "m",
                      tta={"kidney": 4})
    tumor_cfg = load_checkpoint(done["tumor"] / "checkpoint_final.pt")["stage"]["tta"]
    loaded = load_bundle(b.path)
    assert loaded.stages["kidney"].tta == 4 and loaded.stages["tumor"].tta == tumor_cfg
    # a stage taken over from a bundle can get its cap too
    again = export_bundle({"roi": [b.path], "kidney": [b.path], "tumor": [b.path]}, tmp_path / "m2", tta={"roi": 2})
    assert (again.stages["roi"].tta, again.stages["kidney"].tta) == (2, 4)
    with pytest.raises(ValueError, match="tta of the kidney stage must be an integer from 1 to 12, got 13"):
        export_bundle({"kidney": [done["kidney"]], "tumor": [done["tumor"]]}, tmp_path / "bad", tta={"kidney": 13})
    with pytest.raises(ValueError, match="does not have: roi"):
        export_bundle({"kidney": [done["kidney"]], "tumor": [done["tumor"]]}, tmp_path / "bad", tta={"roi": 2})
    assert not (tmp_path / "bad").exists()
    args = ["export", "--kidney", str(done["kidney"]), "--tumor", str(done["tumor"]), "-o", str(tmp_path / "cli")]
    assert train_main(args + ["--tta", "kidney:4"]) == 1
    assert "--tta takes ROLE=N (e.g. kidney=4), got 'kidney:4'" in caplog.text
    assert train_main(args + ["--tta", "kidney=2", "tumor=8"]) == 0
    cli = load_bundle(tmp_path / "cli")
    assert (cli.stages["kidney"].tta, cli.stages["tumor"].tta) == (2, 8)


def test_export_sets_stage4_settings(runs, tmp_path, caplog):
    _, done = runs
    args = ["export", "--kidney", str(done["kidney"]), "--tumor", str(done["tumor"]), "-o"]
    assert train_main(args + [str(tmp_path / "m"), "--post", "tumor_growth_passes=3", "tumor_growth_mm=13",
                              "cyst_max_hu=none", "min_kidney_contact=0.25"]) == 0
    post = load_bundle(tmp_path / "m").postprocess
    assert (post.tumor_growth_passes, post.tumor_growth_mm, post.cyst_max_hu, post.candidate_threshold) == (3, 13.0, None, 0.8)
    assert post.min_kidney_contact == 0.25
    assert (post.min_candidate_ml, post.min_listed_ml) == (0.1, 0.05)  # new bundles' size floors
    assert train_main(args + [str(tmp_path / "off"), "--post", "min_kidney_contact=None", "min_listed_ml=0",
                              "min_candidate_ml=0"]) == 0
    off = load_bundle(tmp_path / "off").postprocess
    assert (off.min_kidney_contact, off.min_candidate_ml, off.min_listed_ml) == (None, 0.0, 0.0)
    bad = args + [str(tmp_path / "bad"), "--post"]
    assert train_main(bad + ["growth=3"]) == 1
    assert "--post takes KEY=VALUE with KEY one of fusion, candidate_threshold" in caplog.text
    assert train_main(bad + ["tumor_growth_passes=2.5"]) == 1
    assert "--post tumor_growth_passes: '2.5' is not an integer" in caplog.text
    assert train_main(bad + ["tumor_growth_passes=9"]) == 1
    assert "tumor_growth_passes must be an integer from 0 to 8, got 9" in caplog.text
    assert train_main(bad + ["tumor_growth_mm=-1"]) == 1
    assert "tumor_growth_mm must be from 0 to 50 mm, got -1.0" in caplog.text
    assert train_main(bad + ["min_kidney_contact=30"]) == 1
    assert "min_kidney_contact must be a fraction from 0 to 1, got 30.0" in caplog.text
    assert train_main(bad + ["min_candidate_ml=0.02"]) == 1  # under the default listing floor
    assert "min_listed_ml must be from 0 to min_candidate_ml (0.02 mL), got 0.05" in caplog.text
    assert not (tmp_path / "bad").exists()


def test_a_derived_stage_is_its_source_read_at_other_channels(tmp_path):
    from helpers_bundle import make_tiny_bundle

    src = make_tiny_bundle(tmp_path / "src").path
    fields = {"foreground_channel": 1, "mask_outside": False, "margin_mm": 12.0}
    b = export_bundle({"roi": [src], "kidney": [src]}, tmp_path / "b", derived={"tumor": ("kidney", fields)})
    tumor, kidney = b.stages["tumor"], b.stages["kidney"]
    assert (tumor.role, tumor.name, tumor.mask_outside, tumor.margin_mm) == ("tumor", "tumor", False, 12.0)
    assert tumor.network == kidney.network and tumor.spacing == kidney.spacing
    assert tumor.weights == kidney.weights  # the same files, written once
    assert sorted(p.name for p in b.path.glob("*.safetensors")) == ["kidney_0.safetensors", "roi_0.safetensors"]
    assert b.provenance["members"]["tumor"] == [{"derived_from": "kidney", "fields": fields}]
    with pytest.raises(ValueError, match="the 'tumor' stage is derived from the 'kidney' stage; give it no runs"):
        export_bundle({"kidney": [src], "tumor": [src]}, tmp_path / "c", derived={"tumor": ("kidney", {})})
    with pytest.raises(ValueError, match="derived from a 'roi' stage the bundle does not have"):
        export_bundle({"kidney": [src]}, tmp_path / "d", derived={"tumor": ("roi", {})})
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()
