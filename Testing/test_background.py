"""The command line as a background process: events, outputs, errors and cancelling, with real processes."""
from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from KidneyTumorSegLib.background import SegmentationProcess, run_segmentation
from KidneyTumorSegLib.cli import build_parser
from KidneyTumorSegLib.events import STAGE_ORDER
from KidneyTumorSegLib.phantom import write_phantom_cases
from KidneyTumorSegLib.run_settings import RunSettings
from KidneyTumorSegLib.geometry.slicer_geometry import roi_from_slicer
from helpers_bundle import make_tiny_bundle

POSIX = os.name == "posix"
CPU = RunSettings(device="cpu")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    # "foreground everywhere" networks: a deterministic run through every stage
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "fg", fg_bias=8.0).path


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    return write_phantom_cases(root, 1, seed0=5, shape=(32, 96, 96), spacing=(3.5, 3.5, 5.0), n_tumors=1)[0]


# the phantom spans LPS x -168..164, y -166..166, z -248..-93; a central box keeps the run short (stage 1 skipped)
ROI = roi_from_slicer((0.0, 0.0, -170.0), (120.0, 100.0, 80.0))


def _process_states(pgid):
    """States of the live (non-zombie) processes in group ``pgid``; Linux /proc, else a signal probe."""
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(pgid, 0)
            return ["?"]
        except ProcessLookupError:
            return []
    states = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            states.append(fields[0])
    return states


def _finish(p, seconds):
    """The exit status of ``p`` once it has ended and its output is read."""
    deadline = time.monotonic() + seconds
    while p.running:
        assert time.monotonic() < deadline, p.log_tail()
        time.sleep(0.05)
    return p.returncode


def _alive(pid):
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text.rsplit(")", 1)[1].split()[0] != "Z"


def test_command_maps_every_option_to_the_command_line(tmp_path):
    settings = RunSettings(device="cpu", tta=4, candidate_threshold=0.65, keep_components=1, roi=ROI,
                           save_candidates=True, preview=False)
    p = SegmentationProcess(tmp_path / "ct.nrrd", tmp_path / "out", model=tmp_path / "model", settings=settings,
                            python="/opt/PythonSlicer")
    cmd = p.command
    assert cmd[:4] == ["/opt/PythonSlicer", "-m", "KidneyTumorSegLib", "segment"]
    args = build_parser().parse_args(cmd[3:])
    assert args.inputs == [str((tmp_path / "ct.nrrd").absolute())]
    assert args.output == str((tmp_path / "out").absolute())
    assert args.model == str((tmp_path / "model").absolute())
    assert (args.device, args.tta, args.candidate_threshold, args.keep_components) == ("cpu", 4, 0.65, 1)
    assert args.roi == pytest.approx((-60.0, -50.0, -210.0, 60.0, 50.0, -130.0))  # negative first value survives
    assert args.events == "-" and args.no_progress and args.save_candidates and args.no_preview
    bare = build_parser().parse_args(SegmentationProcess("ct.nrrd", "out").command[3:])
    assert bare.model is None and bare.roi is None and not bare.save_candidates and bare.tta == 1


def test_parser_keeps_log_lines_out_of_the_events(tmp_path):
    p = SegmentationProcess(tmp_path / "ct.nrrd", tmp_path / "out")
    p._consume("INFO case_00000: Segmenting kidneys\n")
    p._consume('KTS-EVENT {"event":"progress","case":"c","index":0,"stage":"kidney","stage_fraction":0.5,'
               '"fraction":0.35,"message":"x"}\n')
    p._consume("KTS-EVENT {not json\n")
    p._consume("Traceback (most recent call last):\n")
    p._consume("\n")
    p._consume('KTS-EVENT {"event":"case_failed","case":"c","error":"cannot read it"}\n')
    assert [e["event"] for e in p.poll()] == ["progress", "case_failed"]
    assert p.poll() == []
    assert p.log_tail() == ["INFO case_00000: Segmenting kidneys", "KTS-EVENT {not json",
                            "Traceback (most recent call last):"]
    assert p.error_message() == "cannot read it"


def test_full_run_reports_progress_and_outputs(case, bundle, tmp_path):
    out = tmp_path / "work" / "out"
    (tmp_path / "work").mkdir()
    p = SegmentationProcess(case, out, model=bundle,
                            settings=RunSettings(device="cpu", roi=ROI, save_candidates=True, preview=False))
    assert not p.running and p.returncode is None
    p.start()
    events = []
    while p.running:  # what the Slicer module's QTimer does
        events += p.poll()
        time.sleep(0.05)
    events += p.poll()
    assert p.returncode == 0
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-2:] == ["case_done", "done"] and "case_failed" not in kinds
    prog = [e for e in events if e["event"] == "progress"]
    stages = [e["stage"] for e in prog]
    assert [s for n, s in enumerate(stages) if n == 0 or stages[n - 1] != s] == list(STAGE_ORDER)
    fractions = [e["fraction"] for e in prog]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == pytest.approx(1.0)
    outs = p.outputs
    assert set(outs) == {"label", "segmentation", "report", "candidates"}
    for path in outs.values():
        assert Path(path).is_absolute() and Path(path).is_file() and Path(path).parent.parent == out
    report = json.loads(Path(outs["report"]).read_text())
    assert report["status"] == "implausible"  # the always-foreground test model's kidneys are flagged
    # the ROI reached the core: its box, snapped outwards to the voxel grid (3.5 x 3.5 x 5 mm)
    lo, hi = report["roi_lps_mm"]
    for n, voxel in enumerate((3.5, 3.5, 5.0)):
        assert ROI.lo[n] - voxel <= lo[n] <= ROI.lo[n] + 1e-6 and ROI.hi[n] - 1e-6 <= hi[n] <= ROI.hi[n] + voxel
    assert p.error_message() == ""
    log_lines = p.log_tail()
    assert any(line.startswith("INFO") for line in log_lines)
    assert not any("KTS-EVENT" in line for line in log_lines)
    p.cancel()  # after the end: a no-op for the process, and the outputs go with the cancelled run
    assert not out.exists()


def test_cancel_stops_the_whole_process_tree_and_removes_the_output(case, bundle, tmp_path):
    extra = {}
    pidfile = tmp_path / "grandchild.pid"
    if POSIX:
        # a "python" that leaves a grandchild behind, as a worker pool would: cancel must reach it too
        wrapper = tmp_path / "python-with-child"
        wrapper.write_text(f'#!/bin/sh\nsleep 300 &\necho $! > "{pidfile}"\nexec "{sys.executable}" "$@"\n')
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
        extra["python"] = str(wrapper)
    out = tmp_path / "out"
    p = SegmentationProcess(case, out, model=bundle, settings=CPU, **extra).start()
    assert out.is_dir()  # made by start(), so cancel may remove it at any time
    deadline = time.monotonic() + 60
    seen = []
    while not any(e["event"] == "progress" for e in seen):
        assert p.running and time.monotonic() < deadline, p.log_tail()
        seen += p.poll()
        time.sleep(0.02)
    pid = p._proc.pid
    t0 = time.monotonic()
    p.cancel()
    assert time.monotonic() - t0 < 5.0
    assert not p.running and p.returncode != 0
    assert not any(e["event"] == "case_done" for e in seen + p.poll())
    assert not out.exists()
    assert p.outputs == {}
    assert p.error_message() == "cancelled"
    if POSIX:
        assert _process_states(pid) == []
        assert not _alive(int(pidfile.read_text()))
    p.cancel()  # twice is harmless


def test_cancel_keeps_an_output_folder_it_did_not_create(case, bundle, tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    p = SegmentationProcess(case, out, model=bundle, settings=CPU).start()
    p.cancel()
    assert (out / "keep.txt").read_text() == "mine"
    assert not p.running
    if POSIX:
        assert _process_states(p._proc.pid) == []


def test_bad_input_gives_the_core_message(bundle, tmp_path):
    bad = tmp_path / "notct.nii.gz"
    bad.write_text("this is not an image")
    p = SegmentationProcess(bad, tmp_path / "out", model=bundle, settings=CPU).start()
    assert _finish(p, 60) == 1
    kinds = [e["event"] for e in p.poll()]
    assert kinds == ["start", "case_failed", "done"]
    msg = p.error_message()
    assert "cannot read" in msg and "notct.nii.gz" in msg
    assert p.outputs == {}


def test_run_segmentation_raises_with_the_output_tail_when_no_event_explains(tmp_path):
    seen = []
    with pytest.raises(RuntimeError, match="invalid choice: 'bogus'"):
        run_segmentation(tmp_path / "ct.nii.gz", tmp_path / "out", settings=RunSettings(precision="bogus"),
                         progress=seen.append, timeout=60)
    assert seen == []  # the command line stopped before its event stream started


@pytest.mark.skipif(not POSIX, reason="uses a shell script as the interpreter")
def test_run_segmentation_relays_events_and_returns_the_outputs(tmp_path):
    """A stand-in command line that only speaks the event protocol: the loop, not the core, is under test."""
    label = tmp_path / "out" / "c" / "c.label.nii.gz"
    lines = [
        "INFO starting",
        'KTS-EVENT {"event":"start","cases":1,"model":"m","device":"cpu"}',
        'KTS-EVENT {"event":"progress","case":"c","index":0,"stage":"kidney","stage_fraction":0.5,"fraction":0.35,"message":""}',
        'KTS-EVENT {"event":"case_done","case":"c","status":"ok","outputs":{"label":"%s"},"messages":[]}' % label,
        'KTS-EVENT {"event":"done","ok":1,"failed":0}',
    ]
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\n" + "".join(f"echo '{ln}' >&2\nsleep 0.1\n" for ln in lines))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    seen = []
    outs = run_segmentation(tmp_path / "ct.nii.gz", tmp_path / "out", python=str(fake), progress=seen.append,
                            timeout=30, poll_interval=0.02)
    assert outs == {"label": str(label)}
    assert [e["event"] for e in seen] == ["start", "progress", "case_done", "done"]
    with pytest.raises(TimeoutError, match="cancelled"):
        run_segmentation(tmp_path / "ct.nii.gz", tmp_path / "out2", python=str(fake), timeout=0.2)
    assert not (tmp_path / "out2").exists()
