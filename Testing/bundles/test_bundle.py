"""Model bundles: manifest, hashes, safe loading, clear errors."""
from __future__ import annotations

import json

import pytest
import torch

from KidneyTumorSegLib.bundles.bundle import MANIFEST, BundleError, load_bundle
from helpers_bundle import make_tiny_bundle


def test_bundle_round_trip_and_card(tmp_path):
    b = make_tiny_bundle(tmp_path / "m", ensemble=2)
    again = load_bundle(tmp_path / "m")
    assert set(again.stages) == {"roi", "kidney", "tumor"}
    assert again.stages["tumor"].weights == ("tumor_0.safetensors", "tumor_1.safetensors")
    assert again.stages["tumor"].mask_outside is True
    assert again.stages["kidney"].spacing == (4.0, 3.0, 3.0)
    models = again.build_models("kidney")
    assert len(models) == 2 and not models[0].training
    sd0 = b.load_state_dicts("kidney")[0]
    for k, v in models[0].state_dict().items():
        assert torch.equal(v, sd0[k])
    card = again.card()
    assert card["stages"]["tumor"]["ensemble"] == 2
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    assert manifest["schema_version"] == 1 and len(manifest["files"]) == 6
    assert all(len(h) == 64 for h in manifest["files"].values())


def test_model_limitations_travel_with_every_result(tmp_path):
    from KidneyTumorSegLib.config import RuntimeConfig
    from KidneyTumorSegLib.phantom import make_phantom
    from KidneyTumorSegLib.pipeline import Segmenter

    note = "trained on synthetic phantoms only; tumor calls unreliable"
    make_tiny_bundle(tmp_path / "m", fg_bias=8.0, limitations=note)
    b = load_bundle(tmp_path / "m")
    assert b.limitations == note and b.card()["limitations"] == note
    ph = make_phantom(5, shape=(32, 96, 96), spacing=(3.5, 3.5, 5.0), n_tumors=1)
    result = Segmenter(b, RuntimeConfig(device="cpu")).segment(ph.image)
    assert result.status == "implausible"  # an always-foreground model; its limitations are still said
    assert result.messages[-1] == f"Model tiny-test: {note}"
    assert result.report()["messages"][-1] == f"Model tiny-test: {note}"
    # a bundle that states none adds nothing
    make_tiny_bundle(tmp_path / "plain", fg_bias=8.0)
    plain = Segmenter(load_bundle(tmp_path / "plain"), RuntimeConfig(device="cpu")).segment(ph.image)
    assert not any(m.startswith("Model ") for m in plain.messages)


def test_bundle_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        make_tiny_bundle(tmp_path / "m")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o755
    assert {stat.S_IMODE(f.stat().st_mode) for f in (tmp_path / "m").iterdir()} == {0o644}


def test_bundle_refuses_to_overwrite(tmp_path):
    make_tiny_bundle(tmp_path / "m")
    with pytest.raises(FileExistsError, match="use --overwrite"):
        make_tiny_bundle(tmp_path / "m")
    make_tiny_bundle(tmp_path / "m", seed=1, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_wrong_hash_names_the_file(tmp_path):
    make_tiny_bundle(tmp_path / "m")
    w = tmp_path / "m" / "kidney_0.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"kidney_0\.safetensors: SHA-256 mismatch"):
        load_bundle(tmp_path / "m")


def test_missing_weight_file_names_the_file(tmp_path):
    make_tiny_bundle(tmp_path / "m")
    (tmp_path / "m" / "tumor_0.safetensors").unlink()
    with pytest.raises(BundleError, match=r"tumor_0\.safetensors: weight file listed in the manifest is missing"):
        load_bundle(tmp_path / "m")


def test_unknown_schema_version(tmp_path):
    make_tiny_bundle(tmp_path / "m")
    mp = tmp_path / "m" / MANIFEST
    data = json.loads(mp.read_text())
    data["schema_version"] = 99
    mp.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"manifest\.json: unknown schema version 99"):
        load_bundle(tmp_path / "m")


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="model bundle folder not found"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="manifest is not valid JSON"):
        load_bundle(tmp_path / "x")


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    make_tiny_bundle(tmp_path / "m")
    mp = tmp_path / "m" / MANIFEST
    data = json.loads(mp.read_text())
    data["stages"][1]["network"]["channels"] = [8, 16, 32]
    mp.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"kidney_0\.safetensors: weights do not match"):
        load_bundle(tmp_path / "m").build_models("kidney")


def test_weights_are_not_unpickled(tmp_path):
    # a pickle placed where safetensors is expected is rejected, never executed
    make_tiny_bundle(tmp_path / "m")
    w = tmp_path / "m" / "roi_0.safetensors"
    torch.save({"x": torch.zeros(1)}, w)
    with pytest.raises(BundleError, match="SHA-256 mismatch"):
        load_bundle(tmp_path / "m")


def _two_encoder_bundle(path):
    """A bundle whose kidney stage is an ensemble of two different networks (report 000's two encoders)."""
    from dataclasses import replace

    from KidneyTumorSegLib.bundles.bundle import save_bundle
    from KidneyTumorSegLib.config import PostprocessConfig
    from KidneyTumorSegLib.engine.networks import build_network
    from helpers_bundle import TINY_NET, tiny_stages

    plain = replace(TINY_NET, architecture="unet", channels=(4, 8, 16))
    roi, kidney, tumor = tiny_stages()
    kidney = replace(kidney, member_networks=(TINY_NET, plain))
    torch.manual_seed(0)
    sds = {"roi": [build_network(TINY_NET).state_dict()], "tumor": [build_network(TINY_NET).state_dict()],
           "kidney": [build_network(TINY_NET).state_dict(), build_network(plain).state_dict()]}
    return save_bundle(path, [roi, kidney, tumor], sds, PostprocessConfig(), name="two-encoders")


def test_an_ensemble_of_different_networks_round_trips_and_runs(tmp_path):
    from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetResBlock

    _two_encoder_bundle(tmp_path / "m")
    b = load_bundle(tmp_path / "m")
    assert [n.architecture for n in b.stage("kidney").member_networks] == ["resunet", "unet"]
    assert b.card()["stages"]["kidney"]["architecture"] == "resunet + unet"
    res, plain = b.build_models("kidney")
    assert isinstance(res.encoder[0], UnetResBlock) and isinstance(plain.encoder[0], UnetBasicBlock)
    with torch.no_grad():
        assert res(torch.zeros(1, 1, 8, 8, 8)).shape == plain(torch.zeros(1, 1, 8, 8, 8)).shape == (1, 2, 8, 8, 8)


def test_member_networks_are_checked(tmp_path):
    from dataclasses import replace

    from helpers_bundle import TINY_NET, tiny_stages

    kidney = tiny_stages()[1]
    with pytest.raises(ValueError, match=r"member_networks\[1\] \(unet, 3D, 1 -> 3 channels\) does not take and give "
                                         r"what the stage's network does \(3D, 1 -> 2 channels\)"):
        replace(kidney, member_networks=(TINY_NET, replace(TINY_NET, architecture="unet", out_channels=3)))
    _two_encoder_bundle(tmp_path / "m")
    mp = tmp_path / "m" / MANIFEST
    good = json.loads(mp.read_text())
    data = json.loads(mp.read_text())
    data["stages"][1]["member_networks"] = data["stages"][1]["member_networks"][:1]
    mp.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="stage 'kidney' lists 1 member_networks for 2 weight files"):
        load_bundle(tmp_path / "m")
    data = json.loads(json.dumps(good))
    data["stages"][1]["member_networks"][1]["architecture"] = "transformer"
    mp.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"member_networks\[1\]\.architecture must be one of"):
        load_bundle(tmp_path / "m")
    data = json.loads(json.dumps(good))
    data["stages"][1]["member_networks"][1]["channels"] = [8, 16, 32]  # not what its weight file holds
    mp.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"kidney_1\.safetensors: weights do not match the 'unet' network"):
        load_bundle(tmp_path / "m").build_models("kidney")


def test_label_assignment_fusion_and_a_kidney_alone_stage_go_together(tmp_path):
    from helpers_bundle import make_tiny_bundle

    make_tiny_bundle(tmp_path / "m")
    mp = tmp_path / "m" / MANIFEST
    data = json.loads(mp.read_text())
    data["postprocess"]["fusion"] = "label_assignment"
    mp.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="the label_assignment fusion and a 'kidney_alone' stage go together; fusion "
                                          "is 'label_assignment', stages are roi, kidney, tumor"):
        load_bundle(tmp_path / "m")
    data["postprocess"]["fusion"] = "candidate_mean_probability"
    data["stages"].append(dict(data["stages"][1], name="k", role="kidney_alone"))
    mp.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="fusion is 'candidate_mean_probability', stages are roi, kidney, tumor, "
                                          "kidney_alone"):
        load_bundle(tmp_path / "m")
    data["postprocess"]["fusion"] = "label_assignment"
    mp.write_text(json.dumps(data))
    assert load_bundle(tmp_path / "m").stage("kidney_alone").weights == ("kidney_0.safetensors",)


def test_a_safetensors_file_whose_header_length_starts_like_a_pickle_loads(tmp_path):
    # safetensors begins with the header's length, little-endian: a length of 0x..80 puts 0x80 (a pickle's
    # first byte) first. Such a file (an exported bundle's kidney stage had one) is safetensors all the same.
    from safetensors.torch import save_file

    from KidneyTumorSegLib.bundles.bundle_weights import read_header

    for pad in range(0, 300):
        path = tmp_path / "w.safetensors"
        save_file({"x" * (1 + pad): torch.zeros(2)}, str(path))
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no header length with 0x80 as its low byte")
    header, problem = read_header(path)
    assert problem is None and list(header) == ["x" * (1 + pad)]
    pickled = tmp_path / "p.safetensors"
    import pickle

    pickled.write_bytes(pickle.dumps({"x": 1}, protocol=4))
    assert read_header(pickled) == (None, "a Python pickle, which is never loaded")
