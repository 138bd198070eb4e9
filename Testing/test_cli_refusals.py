"""``kidneytumorseg segment`` refuses bad options and inputs before anything runs (issue 27).

Each refusal is checked for its exact message, its exit status (2) and that
nothing was written and no model was loaded: ``Segmenter`` is replaced by a
stand-in that raises ``_Started``, so a run that gets past the checks shows.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest

import KidneyTumorSegLib.pipeline as pipeline
from KidneyTumorSegLib.background import SegmentationProcess
from KidneyTumorSegLib.cli import build_parser, main
from KidneyTumorSegLib.run_settings import RunSettings
from KidneyTumorSegLib.geometry.slicer_geometry import roi_from_slicer


class _Started(Exception):
    """Raised by the stand-in model: the run got past every check."""


@pytest.fixture
def started(monkeypatch):
    calls = []

    def fake_segmenter(*args, **kwargs):
        calls.append((args, kwargs))
        raise _Started("inference would start here")

    monkeypatch.setattr(pipeline, "Segmenter", fake_segmenter)
    return calls


@pytest.fixture
def ct(tmp_path):
    # find_cases reads nothing of an image file: any bytes do for the checks before the run
    path = tmp_path / "in" / "case_7.nii.gz"
    path.parent.mkdir()
    path.write_bytes(b"not read before the checks")
    return path


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _errors(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.name == "kidneytumorseg" and r.levelno >= logging.ERROR]


# -- 1. option values: refused by the parser ----------------------------------
BAD_VALUES = [
    (["--tta", "0"], "argument --tta: must be a whole number from 1 to 12, got '0'"),
    (["--tta", "-1"], "argument --tta: must be a whole number from 1 to 12, got '-1'"),
    (["--tta", "13"], "argument --tta: must be a whole number from 1 to 12, got '13'"),
    (["--batch", "0"], "argument --batch: must be a whole number of at least 1, got '0'"),
    (["--batch", "-2"], "argument --batch: must be a whole number of at least 1, got '-2'"),
    (["--candidate-threshold", "2"], "argument --candidate-threshold: must be a finite number from 0 to 1, got '2'"),
    (["--candidate-threshold", "-0.1"],
     "argument --candidate-threshold: must be a finite number from 0 to 1, got '-0.1'"),
    (["--candidate-threshold", "nan"],
     "argument --candidate-threshold: must be a finite number from 0 to 1, got 'nan'"),
    (["--overlap", "0.95"], "argument --overlap: must be a finite number from 0 to 0.9, got '0.95'"),
    (["--overlap", "-0.1"], "argument --overlap: must be a finite number from 0 to 0.9, got '-0.1'"),
    (["--overlap", "nan"], "argument --overlap: must be a finite number from 0 to 0.9, got 'nan'"),
    (["--threads", "-1"], "argument --threads: must be a whole number of at least 0, got '-1'"),
    (["--tumor-growth-mm", "nan"], "argument --tumor-growth-mm: must be a finite number from 0 to 50, got 'nan'"),
    (["--tumor-growth-mm", "-1"], "argument --tumor-growth-mm: must be a finite number from 0 to 50, got '-1'"),
    (["--roi=10,0,0,-10,5,5"], "argument --roi: X0 must be less than X1, got X0=10 and X1=-10"),
    (["--roi=0,0,5,10,10,5"], "argument --roi: Z0 must be less than Z1, got Z0=5 and Z1=5"),
    (["--roi=0,0,0,nan,10,10"], "argument --roi: X1 must be a finite number, got 'nan'"),
    (["--roi=-inf,0,0,10,10,10"], "argument --roi: X0 must be a finite number, got '-inf'"),
    (["--roi=1,2,3"], "argument --roi: expected 6 numbers X0,Y0,Z0,X1,Y1,Z1, got '1,2,3'"),
]


@pytest.mark.parametrize("option,message", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_bad_option_value_is_refused_by_the_parser(option, message, ct, tmp_path, started, capsys):
    out, events = tmp_path / "out", tmp_path / "events.jsonl"
    with pytest.raises(SystemExit) as exc:
        main(["segment", str(ct), "-o", str(out), "--events", str(events), "--no-progress"] + option)
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"kidneytumorseg segment: error: {message}"
    assert not out.exists() and not events.exists() and not started


def test_limits_and_the_slicer_module_values_still_parse(tmp_path):
    parse = build_parser().parse_args
    args = parse(["segment", "ct.nii.gz", "-o", "out", "--tta", "12", "--batch", "1", "--threads", "0", "--overlap",
                  "0.9", "--candidate-threshold", "0", "--tumor-growth-mm", "50", "--roi=-10.5,-3,-200,0,4e1,-100"])
    assert (args.tta, args.batch, args.threads, args.overlap) == (12, 1, 0, 0.9)
    assert (args.candidate_threshold, args.tumor_growth_mm) == (0.0, 50.0)
    assert args.roi == (-10.5, -3.0, -200.0, 0.0, 40.0, -100.0)
    args = parse(["segment", "ct.nii.gz", "-o", "out", "--tta", "1", "--overlap", "0", "--candidate-threshold", "1",
                  "--tumor-growth-mm", "0"])
    assert (args.tta, args.overlap, args.candidate_threshold, args.tumor_growth_mm) == (1, 0.0, 1.0, 0.0)
    # what the Slicer module passes (runsettings.runSettings -> runs.prepareWork -> SegmentationProcess.command)
    roi = roi_from_slicer((10.0, 20.0, -30.0), (40.0, 50.0, 60.0))
    for tta, threshold in ((1, 0.8), (4, 0.0), (12, 1.0), (4, 0.65)):
        settings = RunSettings(device="cpu", tta=tta, candidate_threshold=threshold, keep_components=1, roi=roi,
                               tumor_growth_passes=2)
        proc = SegmentationProcess(tmp_path / "input.nrrd", tmp_path / "out", model=tmp_path / "model", settings=settings)
        args = parse(proc.command[3:])
        assert (args.tta, args.candidate_threshold, args.tumor_growth) == (tta, threshold, 2)
        assert args.roi == pytest.approx(tuple(roi.lo) + tuple(roi.hi), abs=1e-4)


# -- 2. the same case twice ----------------------------------------------------
def test_same_input_twice_is_refused_before_anything_runs(ct, tmp_path, started, caplog):
    out, events = tmp_path / "out", tmp_path / "events.jsonl"
    rc = main(["segment", str(ct), str(ct), "-o", str(out), "--events", str(events), "--no-progress"])
    assert rc == 2
    assert _errors(caplog) == [f"the input '{ct}' is given more than once (case id 'case_7'); nothing was run"]
    assert not out.exists() and not events.exists() and not started


def test_same_file_through_its_folder_and_another_spelling_is_refused(ct, tmp_path, started, caplog):
    other = ct.parent / "sub" / ".." / ct.name  # the same file, spelled differently
    (ct.parent / "sub").mkdir()
    out = tmp_path / "out"
    assert main(["segment", str(ct.parent), str(other), "-o", str(out), "--no-progress"]) == 2
    assert _errors(caplog) == [f"the input '{other}' is given more than once (case id 'case_7'); nothing was run"]
    assert not out.exists() and not started


SAME_FOLDER = [
    (("case_3.nii.gz", "case_3.nrrd"),
     "case id 'case_3' of '{second}' is also that of '{first}': both would be written to the folder '{folder}'; "
     "rename one, or segment them in separate runs; nothing was run"),
    (("Case_3.nii.gz", "case_3.mha"),
     "case ids 'Case_3' of '{first}' and 'case_3' of '{second}' differ only in letter case: on Windows and macOS both "
     "would be written to the folder '{folder}'; rename one, or segment them in separate runs; nothing was run"),
]


@pytest.mark.parametrize("names,message", SAME_FOLDER, ids=["same-id", "letter-case"])
def test_two_inputs_with_one_output_folder_are_refused(names, message, tmp_path, started, caplog):
    first, second = tmp_path / "x" / names[0], tmp_path / "y" / names[1]
    for p in (first, second):
        p.parent.mkdir()
        p.write_bytes(b"not read")
    out = tmp_path / "out"
    (out / "keep").mkdir(parents=True)
    (out / "keep" / "old.txt").write_text("earlier results")
    before = _tree(out)
    assert main(["segment", str(first), str(second), "-o", str(out), "--no-progress"]) == 2
    assert _errors(caplog) == [message.format(first=first, second=second, folder=out / "case_3")]
    assert _tree(out) == before and sorted(p.name for p in out.iterdir()) == ["keep"] and not started


def test_clashing_names_inside_one_folder_still_get_their_own_ids(tmp_path, started):
    folder = tmp_path / "cases"
    folder.mkdir()
    for name in ("case_3.nii.gz", "case_3.nrrd", "case_4.nii.gz"):
        (folder / name).write_bytes(b"not read")
    with pytest.raises(_Started):  # find_cases names them case_3 and case_3_2: the run starts
        main(["segment", str(folder), "-o", str(tmp_path / "out"), "--no-progress"])
    assert len(started) == 1


# -- 3. --events ------------------------------------------------------------------
def test_events_naming_a_folder_is_refused(ct, tmp_path, started, caplog):
    folder = tmp_path / "ev"
    folder.mkdir()
    out = tmp_path / "out"
    assert main(["segment", str(ct), "-o", str(out), "--events", str(folder), "--no-progress"]) == 2
    assert _errors(caplog) == [f"--events: '{folder}' is a folder; give a file name (or '-' for stderr)"]
    assert not out.exists() and not any(folder.iterdir()) and not started


def test_events_in_a_missing_folder_is_refused(ct, tmp_path, started, caplog):
    events = tmp_path / "missing" / "events.jsonl"
    out = tmp_path / "out"
    assert main(["segment", str(ct), "-o", str(out), "--events", str(events), "--no-progress"]) == 2
    assert _errors(caplog) == [f"--events: cannot write '{events}': the folder '{events.parent}' does not exist"]
    assert not out.exists() and not events.parent.exists() and not started


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "existing-file"])
def test_events_without_write_permission_is_refused(existing, ct, tmp_path, started, caplog, monkeypatch):
    folder = tmp_path / "readonly"
    folder.mkdir()
    events = folder / "events.jsonl"
    if existing:
        events.write_text("old run\n")
    denied = events if existing else folder
    real_access = os.access

    def access(path, mode, *args, **kwargs):  # as for a user without write permission (tests may run as root)
        if Path(path) == denied and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    out = tmp_path / "out"
    assert main(["segment", str(ct), "-o", str(out), "--events", str(events), "--no-progress"]) == 2
    why = "no permission to write this file" if existing else f"no permission to write in the folder '{folder}'"
    assert _errors(caplog) == [f"--events: cannot write '{events}': {why}"]
    assert not out.exists() and not started
    assert (events.read_text() == "old run\n") if existing else not events.exists()


def test_events_naming_an_input_is_refused(ct, tmp_path, started, caplog):
    before = ct.read_bytes()
    out = tmp_path / "out"
    assert main(["segment", str(ct), "-o", str(out), "--events", str(ct), "--no-progress"]) == 2
    assert _errors(caplog) == [f"--events: '{ct}' is an input; writing the events there would replace it"]
    assert ct.read_bytes() == before and not out.exists() and not started


@pytest.mark.parametrize("target", ["-", "new.jsonl", "existing.jsonl"])
def test_usable_events_targets_pass_the_checks(target, ct, tmp_path, started):
    (tmp_path / "existing.jsonl").write_text("old run\n")
    events = "-" if target == "-" else str(tmp_path / target)
    with pytest.raises(_Started):
        main(["segment", str(ct), "-o", str(tmp_path / "out"), "--events", events, "--no-progress"])
    assert len(started) == 1
