"""One run-settings object from the Slicer panel to the Segmenter: ``RunSettings`` to argv and back.

The Slicer module's background process writes the settings as ``segment`` options
(``RunSettings.to_argv``); the command line reads them back (``RunSettings.from_args``) and hands
the object to the Segmenter. Every field makes the round trip, the defaults included, and a field
left at None (the model's value) puts no option on the command line.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

import KidneyTumorSegLib.pipeline as pipeline
from KidneyTumorSegLib.background import SegmentationProcess
from KidneyTumorSegLib.cli import build_parser, main
from KidneyTumorSegLib.config import RuntimeConfig
from KidneyTumorSegLib.presets import Quality
from KidneyTumorSegLib.run_settings import RunSettings
from KidneyTumorSegLib.geometry.volume import RoiWorld

# a value other than the default for every field (floats that have no short decimal form included)
EVERY_FIELD = {
    "device": "cuda:1", "tta": 7, "overlap": 0.1 + 0.2, "sw_batch_size": 3, "precision": "bf16", "threads": 4,
    "candidate_threshold": 2 / 3, "keep_components": 1, "tumor_growth_passes": 3, "tumor_growth_mm": 8.125,
    "roi": RoiWorld((-60.25, -50.0, -210.1), (60.0, 1 / 3, -130.0)), "save_candidates": True, "preview": False,
    "dicom_seg": True,
}


def _round_trip(settings: RunSettings) -> RunSettings:
    args = build_parser().parse_args(["segment", "ct.nii.gz", "-o", "out"] + settings.to_argv())
    return RunSettings.from_args(args)


def test_every_field_is_covered_and_differs_from_its_default():
    assert set(EVERY_FIELD) == {f.name for f in dataclasses.fields(RunSettings)}, "a field the round trip misses"
    defaults = RunSettings()
    for name, value in EVERY_FIELD.items():
        assert getattr(defaults, name) != value, name


def test_the_defaults_round_trip_with_no_option_at_all():
    assert RunSettings().to_argv() == []
    assert _round_trip(RunSettings()) == RunSettings()
    # the parser's defaults are the object's: a bare command line gives the default settings
    assert RunSettings.from_args(build_parser().parse_args(["segment", "ct.nii.gz", "-o", "out"])) == RunSettings()


def test_every_field_round_trips_alone_and_all_together():
    for name, value in EVERY_FIELD.items():
        settings = RunSettings(**{name: value})
        assert _round_trip(settings) == settings, name
        assert len(settings.to_argv()) in (1, 2), (name, settings.to_argv())
    every = RunSettings(**EVERY_FIELD)
    assert _round_trip(every) == every
    assert _round_trip(_round_trip(every)) == every


def test_settings_are_a_runtime_config_and_the_quality_flags_give_the_presets():
    assert isinstance(RunSettings(), RuntimeConfig)
    parse = build_parser().parse_args
    assert RunSettings.from_args(parse(["segment", "c", "-o", "o", "--full"])).tta == Quality.FULL.tta == 12
    assert RunSettings.from_args(parse(["segment", "c", "-o", "o", "--fast"])).tta == Quality.FAST.tta == 1
    # a negative ROI value is written as --roi=..., not taken for an option
    roi = RunSettings(roi=RoiWorld((-1.5, -2.0, -3.0), (1.0, 2.0, 3.0))).to_argv()
    assert roi == ["--roi=-1.5,-2.0,-3.0,1.0,2.0,3.0"]


def test_model_values_left_at_none_put_no_option_on_the_command_line(tmp_path):
    """A setting the user did not touch leaves the model's own value: nothing overrides it."""
    untouched = RunSettings(device="cpu", tta=4, save_candidates=True)
    cmd = SegmentationProcess(tmp_path / "ct.nrrd", tmp_path / "out", model=tmp_path / "m", settings=untouched).command
    for flag in ("--candidate-threshold", "--keep-components", "--tumor-growth", "--tumor-growth-mm"):
        assert not any(a.startswith(flag) for a in cmd), (flag, cmd)
    args = build_parser().parse_args(cmd[3:])
    assert (args.candidate_threshold, args.keep_components, args.tumor_growth, args.tumor_growth_mm) == (None,) * 4
    changed = RunSettings(candidate_threshold=0.65, keep_components=1)
    assert changed.to_argv() == ["--candidate-threshold", "0.65", "--keep-components", "1"]


def test_the_command_hands_the_parsed_settings_to_the_segmenter(tmp_path, monkeypatch):
    ct = tmp_path / "case_1.nii.gz"
    ct.write_bytes(b"not read: the stand-in model stops the run first")
    seen = []

    def fake_segmenter(model, runtime, nnunet=None):
        seen.append(runtime)
        raise ValueError("stand-in model")

    monkeypatch.setattr(pipeline, "Segmenter", fake_segmenter)
    argv = RunSettings(**EVERY_FIELD).to_argv()
    assert main(["segment", str(ct), "-o", str(tmp_path / "out"), "--no-progress"] + argv) == 2
    assert seen == [RunSettings(**EVERY_FIELD)]


def test_importing_the_settings_loads_no_torch():
    """The Slicer process builds the settings and the command line without loading torch."""
    code = ("import sys\nimport KidneyTumorSegLib.run_settings, KidneyTumorSegLib.presets, KidneyTumorSegLib.engine.device\n"
            "sys.exit(1 if 'torch' in sys.modules else 0)\n")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("name,kind", [("auto", ("auto", None)), ("CPU", ("cpu", None)), ("cuda", ("cuda", 0)),
                                       ("cuda:3", ("cuda", 3)), ("", ("auto", None))])
def test_device_names_are_read_in_one_place(name, kind):
    from KidneyTumorSegLib.engine.device import parse_device
    from KidneyTumorSegLib.geometry.volume import InputError

    assert parse_device(name) == kind
    with pytest.raises(InputError, match="unknown device 'gpu0': use auto, cpu, cuda or cuda:N"):
        parse_device("gpu0")
