"""Issue 27: every bad model bundle is refused with one clear line, before anything it names is opened or loaded."""
from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch

import KidneyTumorSegLib.bundles.bundle as bundle_mod
from KidneyTumorSegLib.bundles.bundle import MANIFEST, Bundle, BundleError, default_bundle_path, load_bundle
from KidneyTumorSegLib.cli import main
from helpers_bundle import make_tiny_bundle

_HEADER = b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'
NAME_RULE = "is not a plain file name in the bundle folder (no path separators, no '..', not absolute)"


class _Touch:
    """Unpickling this creates ``marker``: proof that a pickle was (or was not) loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def hashed(monkeypatch):
    """The files the bundle module hashes (opens), in order."""
    seen = []
    real = bundle_mod.sha256_file

    def record(path):
        seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(bundle_mod, "sha256_file", record)
    return seen


def _refusal(call, *args, **kwargs) -> str:
    """The message of the BundleError ``call(*args, **kwargs)`` raises."""
    with pytest.raises(BundleError) as e:
        call(*args, **kwargs)
    return str(e.value)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("v") / "m").path


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _edit(folder: Path, change) -> Path:
    mp = folder / MANIFEST
    data = json.loads(mp.read_text())
    change(data)
    mp.write_text(json.dumps(data))
    return mp


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _replace_weight(folder: Path, name: str, content: bytes) -> Path:
    """Put ``content`` in weight file ``name`` and record its true SHA-256: only the content is wrong."""
    w = folder / name
    w.write_bytes(content)
    _edit(folder, lambda d: d["files"].__setitem__(name, _sha(w)))
    return w


# ---- 1. weight files that are not safetensors ---------------------------------------------------------------------
def test_a_pickle_with_its_true_hash_is_refused_naming_the_file_and_never_unpickled(tiny, tmp_path):
    armed = tmp_path / "armed"
    pickle.loads(pickle.dumps(_Touch(armed)))
    assert armed.exists()  # the payload works: unpickling it would create the marker
    marker = tmp_path / "unpickled"
    m = _copy(tiny, tmp_path / "m")
    w = _replace_weight(m, "roi_0.safetensors", pickle.dumps(_Touch(marker), protocol=4))
    msg = f"{w}: not a safetensors weight file (a Python pickle, which is never loaded)"
    assert _refusal(load_bundle, m) == msg
    b = load_bundle(m, verify=False)
    assert _refusal(b.load_state_dicts, "roi") == msg
    assert _refusal(b.build_models, "roi") == msg
    assert not marker.exists()


def _torch_file() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    return buf.getvalue()


@pytest.mark.parametrize("content, why", [
    (_torch_file(), "a zip archive such as a torch.save checkpoint, which is never loaded"),
    (b"abc", "shorter than a safetensors header"),
    (b"root:x:0:0:root:/root:/bin/bash\n", "its header length 3475222254926655346 does not fit the file's 32 bytes"),
    ((5).to_bytes(8, "little") + b"[1,2]", "its header is not a JSON object"),
    ((5).to_bytes(8, "little") + b"\xff\xfe{}}", "its header is not a JSON object"),
    # a header that parses but describes tensors the file does not hold: safetensors' own error, one line
    # (its wording depends on the safetensors version: only its start is checked)
    (len(_HEADER).to_bytes(8, "little") + _HEADER, "Error while deserializing header: "),
])
def test_other_files_that_are_not_safetensors_are_refused(tiny, tmp_path, content, why):
    m = _copy(tiny, tmp_path / "m")
    w = _replace_weight(m, "tumor_0.safetensors", content)
    msg = _refusal(lambda: load_bundle(m).load_state_dicts("tumor"))
    if why.endswith(": "):
        assert msg.startswith(f"{w}: not a safetensors weight file ({why}") and msg.endswith(")") and "\n" not in msg
    else:
        assert msg == f"{w}: not a safetensors weight file ({why})"


def test_segment_with_a_pickle_weight_fails_cleanly_and_writes_nothing(tiny, tmp_path, caplog):
    m = _copy(tiny, tmp_path / "m")
    w = _replace_weight(m, "roi_0.safetensors", pickle.dumps({"w": 1}, protocol=2))
    case = tmp_path / "ct.nii.gz"
    case.write_bytes(b"never read")
    out = tmp_path / "out"
    assert main(["segment", str(case), "-o", str(out), "--model", str(m), "--device", "cpu", "--no-progress"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"{w}: not a safetensors weight file (a Python pickle, which is never loaded)"]
    assert not out.exists() or not any(out.iterdir())  # nothing written


# ---- 2. weight file names confined to the bundle folder ------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd", "../outside.safetensors",
                                  "sub/roi_0.safetensors", "./roi_0.safetensors", "..", ".", "", "a\\b.safetensors",
                                  "C:roi.safetensors", "roi\n0.safetensors"])
def test_weight_names_outside_the_bundle_folder_are_refused_before_opening_anything(tiny, tmp_path, hashed, name):
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes((tiny / "roi_0.safetensors").read_bytes())  # valid, its hash recorded: only its name is wrong
    m = _copy(tiny, tmp_path / "m")
    mp = _edit(m, lambda d: (d["stages"][0].__setitem__("weights", [name]), d["files"].pop("roi_0.safetensors"),
                             d["files"].__setitem__(name, _sha(outside))))
    assert _refusal(load_bundle, m) == f"{mp}: stage 'coarse': weights entry {json.dumps(name)} {NAME_RULE}"
    assert hashed == []


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd", "sub/x.safetensors", ""])
def test_file_names_in_the_checksum_list_are_confined_too(tiny, tmp_path, hashed, name):
    m = _copy(tiny, tmp_path / "m")
    mp = _edit(m, lambda d: d["files"].__setitem__(name, "0" * 64))
    assert _refusal(load_bundle, m, verify=False) == f"{mp}: files entry {json.dumps(name)} {NAME_RULE}"
    assert hashed == []


def test_a_bundle_made_in_code_cannot_reach_outside_its_folder_either(tiny, tmp_path, hashed):
    b = load_bundle(tiny, verify=False)
    roi = replace(b.stages["roi"], weights=("../../../../etc/passwd",))
    evil = replace(b, stages={**b.stages, "roi": roi}, files={**b.files, "../../../../etc/passwd": "0" * 64})
    assert _refusal(evil.load_state_dicts, "roi") == f"{tiny}: weight file name '../../../../etc/passwd' {NAME_RULE}"
    assert hashed == []


def test_a_weight_that_is_a_folder_is_not_a_regular_file(tiny, tmp_path):
    m = _copy(tiny, tmp_path / "m")
    (m / "tumor_0.safetensors").unlink()
    (m / "tumor_0.safetensors").mkdir()
    msg = f"{m / 'tumor_0.safetensors'}: weight file listed in the manifest is not a regular file"
    assert _refusal(load_bundle, m) == msg


# ---- 3. one checksum look-up ---------------------------------------------------------------------------------------
def test_checksums_are_looked_up_in_one_place_by_the_stage_s_file_name(tiny, tmp_path, monkeypatch):
    asked = []
    real = Bundle.sha256_of

    def record(self, name):
        asked.append(name)
        return real(self, name)

    monkeypatch.setattr(Bundle, "sha256_of", record)
    b = load_bundle(tiny)
    assert asked == ["roi_0.safetensors", "kidney_0.safetensors", "tumor_0.safetensors"]
    asked.clear()
    b.load_state_dicts("kidney")
    assert asked == ["kidney_0.safetensors"]
    # a missing entry reads the same at load (even without hashing) and at use
    m = _copy(tiny, tmp_path / "m")
    _edit(m, lambda d: d["files"].pop("tumor_0.safetensors"))
    msg = f"{m / 'tumor_0.safetensors'}: the manifest lists no SHA-256 for this weight file"
    assert _refusal(load_bundle, m, verify=False) == msg
    gone = replace(b, path=m, files={k: v for k, v in b.files.items() if k != "tumor_0.safetensors"})
    assert _refusal(gone.load_state_dicts, "tumor") == msg


# ---- 4. the manifest checked completely at load ------------------------------------------------------------------
GONE = object()  # remove the field


def _set(where: str, value):
    """A change of the manifest: field ``where`` (``a/0/b``: list indices as numbers) set to ``value``."""
    *keys, last = [int(k) if k.isdigit() else k for k in where.split("/")]

    def change(d):
        for k in keys:
            d = d[k]
        d.pop(last) if value is GONE else d.__setitem__(last, value)
    return change


SPACING = "must be 3 numbers from 0.01 to 100 (mm), got "
PATCH = "must be 3 integers from 1 to 1024, at most 16777216 voxels in all, got "
WINDOW = "must be 2 finite numbers, lower < upper (HU), got "
K, NET, NN, POST = "stages/1/", "stages/1/network/", "stages/1/nnunet", "postprocess/"
KID, NAN, INF = "stage 'kidney': ", math.nan, math.inf
BAD = [
    (K + "spacing", [0, 3, 3], KID + "spacing " + SPACING + "[0, 3, 3]"),
    (K + "spacing", [-4.0, 3.0, 3.0], KID + "spacing " + SPACING + "[-4.0, 3.0, 3.0]"),
    (K + "spacing", [NAN, 3.0, 3.0], KID + "spacing " + SPACING + "[NaN, 3.0, 3.0]"),
    (K + "spacing", [4.0, 3.0, INF], KID + "spacing " + SPACING + "[4.0, 3.0, Infinity]"),
    (K + "spacing", [1e-300, 3.0, 3.0], KID + "spacing " + SPACING + "[1e-300, 3.0, 3.0]"),
    (K + "spacing", [4.0, 3.0], KID + "spacing " + SPACING + "[4.0, 3.0]"),
    (K + "spacing", "4 3 3", KID + "spacing " + SPACING + '"4 3 3"'),
    (K + "spacing", [True, 3.0, 3.0], KID + "spacing " + SPACING + "[true, 3.0, 3.0]"),
    ("stages/0/patch_size", [10 ** 5] * 3, "stage 'coarse': patch_size " + PATCH + "[100000, 100000, 100000]"),
    ("stages/0/patch_size", [512, 512, 512], "stage 'coarse': patch_size " + PATCH + "[512, 512, 512]"),
    ("stages/0/patch_size", [0, 64, 64], "stage 'coarse': patch_size " + PATCH + "[0, 64, 64]"),
    ("stages/0/patch_size", [32.5, 64, 64], "stage 'coarse': patch_size " + PATCH + "[32.5, 64, 64]"),
    ("stages/0/patch_size", [10 ** 400, 64, 64], "stage 'coarse': patch_size " + PATCH + "[1" + "0" * 55 + "..."),
    ("stages/2/window", [1500, -1024], "stage 'tumor': window " + WINDOW + "[1500, -1024]"),
    ("stages/2/window", [NAN, 1500], "stage 'tumor': window " + WINDOW + "[NaN, 1500]"),
    ("stages/2/window", [-1024, INF], "stage 'tumor': window " + WINDOW + "[-1024, Infinity]"),
    ("stages/2/window", [0, 0], "stage 'tumor': window " + WINDOW + "[0, 0]"),
    (K + "norm_std", 0, KID + "norm_std must be a finite number > 0, got 0"),
    (K + "norm_std", -500.0, KID + "norm_std must be a finite number > 0, got -500.0"),
    (K + "norm_std", "500", KID + 'norm_std must be a finite number > 0, got "500"'),
    (K + "norm_std", True, KID + "norm_std must be a finite number > 0, got true"),
    (K + "norm_mean", NAN, KID + "norm_mean must be a finite number, got NaN"),
    (K + "member_norm", [[0.0, 0.0]],
     KID + "member_norm must be a list of [norm_mean, norm_std > 0] pairs of finite numbers, got [[0.0, 0.0]]"),
    (K + "threshold", 1.5, KID + "threshold must be a number from 0 to 1, got 1.5"),
    (K + "tta", 0, KID + "tta must be an integer from 1 to 12, got 0"),
    (K + "tta", 2.0, KID + "tta must be an integer from 1 to 12, got 2.0"),
    (K + "keep_components", -1, KID + "keep_components must be an integer from 1 to 64, got -1"),
    (K + "mask_outside", "yes", KID + 'mask_outside must be true or false, got "yes"'),
    (K + "input_mode", "4d", KID + "input_mode must be one of '3d', '2d', '2.5d', got \"4d\""),
    (K + "labels", "background", KID + 'labels must be a list of strings, got "background"'),
    (K + "role", "liver", KID + "role must be one of 'roi', 'kidney', 'tumor', 'kidney_alone', got \"liver\""),
    (K + "provenance", [], KID + "provenance must be an object, got []"),
    (K + "weights", "kidney_0.safetensors", KID + 'weights must be a list of file names, got "kidney_0.safetensors"'),
    (K + "colour", "red", KID + "unknown field(s) colour"),
    (K + "role", GONE, KID + "role is missing"),
    (K + "name", GONE, "stage #2: name is missing"),
    (K + "name", 7, "stage #2: name must be a non-empty string, got 7"),
    (K + "network", [4, 8, 16], KID + "network must be an object, got [4, 8, 16]"),
    (NET + "channels", ["8", 16, 32],
     KID + 'network.channels must be a list of 2 to 8 integers from 1 to 1024, got ["8", 16, 32]'),
    (NET + "channels", [10 ** 5] * 3,
     KID + "network.channels must be a list of 2 to 8 integers from 1 to 1024, got [100000, 100000, 100000]"),
    (NET + "strides", [1, 2], KID + "network.strides must be one stride per level of network.channels (3), each an "
                                    "integer from 1 to 8 or a list of spatial_dims of them, got [1, 2]"),
    (NET + "kernel_size", 4, KID + "network.kernel_size must be an odd integer from 1 to 7, got 4"),
    (NET + "architecture", "transformer",
     KID + "network.architecture must be one of 'resunet', 'unet', 'preact_resunet', 'vnet', 'enet', 'vnet25d', 'triplanar', got \"transformer\""),
    (NET + "dropout", 1.0, KID + "network.dropout must be a number from 0 to less than 1, got 1.0"),
    (NET + "heads", {"boundary": "one"},
     KID + 'network.heads must be an object of head names to integers from 1 to 64, got {"boundary": "one"}'),
    (NET + "width", 3, KID + "unknown field(s) network.width"),
    (NN, {"folds": ["0"]}, KID + "nnunet.path is missing"),
    (NN, {"path": "m", "folds": ["../../x"]},
     KID + 'nnunet.folds must be a non-empty list of fold names (letters, digits, _), got ["../../x"]'),
    (NN, {"path": "m", "checkpoint": "../../../etc/passwd"}, KID + "nnunet.checkpoint must be a plain file name "
                                                                   "(no path separators, no '..', not absolute), "
                                                                   'got "../../../etc/passwd"'),
    (NN, {"path": "m", "orientation": "XYZ"},
     KID + 'nnunet.orientation must be a 3-letter code of one of L/R, P/A, S/I each (e.g. RAS, IPL), got "XYZ"'),
    (NN, {"path": "m", "files": {"../../etc/passwd": "0" * 64}},
     KID + "nnunet.files entry \"../../etc/passwd\" is not a relative path inside the model's dataset folder"),
    (NN, {"path": "m", "files": {"a/dataset.json": "abc"}},
     KID + 'nnunet.files entry "a/dataset.json" must be a SHA-256 (64 lowercase hex digits), got "abc"'),
    (POST + "candidate_threshold", "high", 'postprocess: candidate_threshold must be a number from 0 to 1, got "high"'),
    (POST + "min_candidate_ml", NAN, "postprocess: min_candidate_ml must be a number from 0 to 1000, got NaN"),
    (POST + "tumor_growth_passes", True, "postprocess: tumor_growth_passes must be an integer from 0 to 8, got true"),
    (POST + "cyst_max_hu", "20", 'postprocess: cyst_max_hu must be null or a finite number, got "20"'),
    (POST + "min_kidney_contact", 2, "postprocess: min_kidney_contact must be null or a number from 0 to 1, got 2"),
    (POST + "speed", 2, "postprocess: unknown field(s) speed"),
    ("postprocess", [1], "postprocess must be an object, got [1]"),
    ("stages", {"kidney": {}}, 'stages must be a non-empty list of stage objects, got {"kidney": {}}'),
    ("stages", [], "stages must be a non-empty list of stage objects, got []"),
    ("stages/1", "kidney", 'stage #2 must be an object, got "kidney"'),
    ("files", GONE, "files is missing"),
    ("files", ["roi_0.safetensors"],
     'files must be an object of weight file names to SHA-256 digests, got ["roi_0.safetensors"]'),
    ("files/roi_0.safetensors", "ABC", 'files entry "roi_0.safetensors" must be a SHA-256 (64 lowercase hex digits), '
                                       'got "ABC"'),
    ("name", {"x": 1}, 'name must be a string, got {"x": 1}'),
    ("provenance", "me", 'provenance must be an object, got "me"'),
    ("extra", 1, "unknown field(s) extra"),
]


@pytest.mark.parametrize("where, value, msg", BAD, ids=[m[:60] for _, _, m in BAD])
def test_every_bad_manifest_value_is_refused_naming_stage_and_field(tiny, tmp_path, hashed, where, value, msg):
    m = _copy(tiny, tmp_path / "m")
    mp = _edit(m, _set(where, value))
    assert _refusal(load_bundle, m) == f"{mp}: {msg}"  # one line: the expected messages have none
    assert hashed == []  # refused before any weight file was opened


def test_values_at_the_limits_and_json_integers_are_accepted(tiny, tmp_path):
    m = _copy(tiny, tmp_path / "m")

    def change(d):
        d["stages"][0].update(spacing=[6, 6, 6], patch_size=[1024, 128, 128], window=[-1024, -1023], norm_std=1e-6,
                              tta=12, threshold=1, keep_components=1)
        d["stages"][1]["network"].update(norm="Instance", act="LeakyReLU")
        d["postprocess"].update(cyst_max_hu=None, min_kidney_contact=0, candidate_threshold=1)

    _edit(m, change)
    b = load_bundle(m)
    assert b.stages["roi"].patch_size == (1024, 128, 128) and b.stages["roi"].spacing == (6, 6, 6)


def test_the_shipped_model_passes_the_checks_unchanged():
    if not (default_bundle_path() / MANIFEST).is_file():
        pytest.skip("the shipped model is not installed")
    before = {p.name: _sha(p) for p in default_bundle_path().iterdir()}
    b = load_bundle(default_bundle_path())
    assert len(b.load_state_dicts("tumor")) == 2
    assert {p.name: _sha(p) for p in default_bundle_path().iterdir()} == before


def test_the_rules_cover_every_configuration_field_and_match_the_modules_they_mirror():
    from KidneyTumorSegLib.bundles import bundle_checks as bc
    from KidneyTumorSegLib.config import NetworkConfig, NnunetSource, PostprocessConfig, StageConfig
    from KidneyTumorSegLib.engine.networks import ARCHITECTURES
    from KidneyTumorSegLib.engine.tta import MAX_TTA

    for cls, rules in ((StageConfig, bc.STAGE_CHECKS), (NetworkConfig, bc.NETWORK_CHECKS),
                       (NnunetSource, bc.NNUNET_CHECKS), (PostprocessConfig, bc.POSTPROCESS_CHECKS)):
        assert set(rules) == {f.name for f in fields(cls)}, cls.__name__
    assert bc.ARCHITECTURES == ARCHITECTURES and bc.MAX_TTA == MAX_TTA


def test_manifest_that_is_too_large_or_too_deep_is_refused(tmp_path):
    m = tmp_path / "m"
    m.mkdir()
    mp = m / MANIFEST
    with open(mp, "wb") as f:
        f.truncate((16 << 20) + 1)
    assert _refusal(load_bundle, m) == f"{mp}: manifest is larger than 16 MiB"
    mp.write_text("[" * 200000 + "]" * 200000)
    assert _refusal(load_bundle, m).startswith(f"{mp}: manifest is not valid JSON: ")


# ---- the command line: one line, non-zero exit, nothing written --------------------------------------------------
def test_info_reports_a_bad_manifest_in_one_line(tiny, tmp_path, capsys):
    m = _copy(tiny, tmp_path / "m")
    mp = _edit(m, _set(K + "spacing", [NAN, 3.0, 3.0]))
    assert main(["info", "--model", str(m), "--device", "cpu"]) == 2
    info = json.loads(capsys.readouterr().out)
    assert info["model_error"] == f"{mp}: stage 'kidney': spacing {SPACING}[NaN, 3.0, 3.0]"
    assert "model" not in info


@pytest.mark.parametrize("spacing", [[-4.0, 3.0, 3.0], [0, 3, 3]])
def test_segment_refuses_a_bad_spacing_before_reading_any_scan(tiny, tmp_path, caplog, spacing):
    m = _copy(tiny, tmp_path / "m")
    mp = _edit(m, _set(K + "spacing", spacing))
    case = tmp_path / "ct.nii.gz"
    case.write_bytes(b"never read")
    out = tmp_path / "out"
    assert main(["segment", str(case), "-o", str(out), "--model", str(m), "--device", "cpu", "--no-progress"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"{mp}: stage 'kidney': spacing {SPACING}{json.dumps(spacing)}"]
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_a_stage_made_in_code_refuses_a_nan_window():
    from KidneyTumorSegLib.config import StageConfig

    with pytest.raises(ValueError) as e:
        StageConfig("k", "kidney", window=(math.nan, 1500.0))
    assert str(e.value) == "stage 'k': window (nan, 1500.0) is empty"
