"""A case's outputs are complete or absent: a full disk, a crashed writer or ``kill -9`` leave no half case.

The full-disk and read-only cases use a small tmpfs mounted for the test (root only; skipped elsewhere).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from KidneyTumorSegLib.io.case_folder import OutputError, check_output_folder, staged_case_folder
from KidneyTumorSegLib.config import RuntimeConfig
from KidneyTumorSegLib.io.outputs import SUFFIXES, write_case_outputs
from KidneyTumorSegLib.phantom import make_phantom
from KidneyTumorSegLib.pipeline import Segmenter

from helpers_bundle import make_tiny_bundle


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A small phantom and its cascade result (tiny always-foreground bundle): (image, result)."""
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("b") / "fg", fg_bias=8.0).path
    image = make_phantom(1, shape=(32, 96, 96), spacing=(3.0, 3.0, 5.0), n_tumors=1).image
    return image, Segmenter(bundle, RuntimeConfig(device="cpu")).segment(image)


def _mount_tmpfs(folder: Path, options: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")


@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def mount(options="size=1m"):
        folder = tmp_path / f"tmpfs{len(mounted)}"
        _mount_tmpfs(folder, options)
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", str(folder)], check=False)


def _fill(folder: Path, leave_bytes: int) -> None:
    """Fill the file system of ``folder`` until about ``leave_bytes`` are free."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * max(free - leave_bytes, 0))


def _hidden(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_full_disk_leaves_no_case_folder_and_the_error_names_the_file(case, tmpfs):
    image, result = case
    disk = tmpfs("size=1m")
    _fill(disk, 12 * 1024)
    with pytest.raises(OutputError) as caught:
        write_case_outputs(result, image, disk / "out", "case_00000", candidates=True)
    message = str(caught.value)
    assert message.startswith(f"could not write {disk / 'out' / 'case_00000'}/case_00000."), message
    assert message.endswith(": no space left on the device"), message
    assert not (disk / "out" / "case_00000").exists(), "no half-written case folder"
    assert _hidden(disk / "out") == [], "the staging folder is removed"


def test_a_full_or_read_only_output_location_is_found_before_any_work(tmpfs, tmp_path):
    full = tmpfs("size=64k")
    _fill(full, 0)
    with pytest.raises(OutputError, match=r"^cannot write in the output folder .*/out: no space left on the device$"):
        check_output_folder(full / "out")
    read_only = tmpfs("size=64k,ro")
    with pytest.raises(OutputError, match=r"^cannot write in the output folder .*: Read-only file system$"):
        check_output_folder(read_only)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(OutputError, match=r"^output folder .*a-file is a file$"):
        check_output_folder(tmp_path / "a-file")
    with pytest.raises(OutputError, match=r"^folder .*a-file is a file$"):
        check_output_folder(tmp_path / "a-file" / "out")
    before = sorted(tmp_path.iterdir())
    assert check_output_folder(tmp_path / "new" / "out") == tmp_path / "new" / "out"
    assert sorted(tmp_path.iterdir()) == before, "nothing is created: no folder, and the probe file is removed"


def test_a_failing_writer_leaves_an_existing_case_folder_as_it_was(case, tmp_path, monkeypatch):
    image, result = case
    first = write_case_outputs(result, image, tmp_path, "case_00000")
    before = {p.name: p.read_bytes() for p in first["label"].parent.iterdir()}
    import KidneyTumorSegLib.io.preview as preview

    def broken(*args, **kwargs):
        raise RuntimeError("simulated crash in the preview writer")

    monkeypatch.setattr(preview, "write_preview", broken)
    with pytest.raises(OutputError, match=r"could not write .*case_00000\.preview\.png: simulated crash"):
        write_case_outputs(result, image, tmp_path, "case_00000", overwrite=True)
    assert {p.name: p.read_bytes() for p in first["label"].parent.iterdir()} == before
    assert _hidden(tmp_path) == []


def test_overwrite_replaces_the_files_keeps_others_and_removes_stale_temporary_files(case, tmp_path):
    image, result = case
    paths = write_case_outputs(result, image, tmp_path, "case_00000")
    folder = paths["label"].parent
    (folder / "notes.txt").write_text("the annotator's notes")
    (folder / ".tmp-1a2b3c4d.nii.gz").write_bytes(b"")  # left by a write killed in an earlier version
    again = write_case_outputs(result, image, tmp_path, "case_00000", overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [p.name for p in again.values()] + ["notes.txt"])
    assert (folder / "notes.txt").read_text() == "the annotator's notes"
    assert set(again) == set(SUFFIXES) - {"candidates", "dicom_seg"}  # the optional ones


_KILLED_WRITER = """
import sys, time
from pathlib import Path
from KidneyTumorSegLib.io.case_folder import staged_case_folder
with staged_case_folder(Path(sys.argv[1])) as staging:
    (staging / "case_00000.label.nii.gz").write_bytes(b"half")
    print("writing", flush=True)
    time.sleep(60)
"""


def test_a_run_killed_while_writing_leaves_no_case_and_the_next_run_cleans_up(case, tmp_path):
    image, result = case
    target = tmp_path / "case_00000"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_KILLED_WRITER), str(target)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert not target.exists()
    stale = _hidden(tmp_path)
    assert len(stale) == 1 and stale[0].startswith(f".tmp-case-{child.pid}-"), stale
    paths = write_case_outputs(result, image, tmp_path, "case_00000")
    assert _hidden(tmp_path) == [], "the killed run's staging folder is removed"
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())


def test_a_live_runs_staging_folder_is_left_alone(tmp_path):
    with staged_case_folder(tmp_path / "a") as staging_a:
        (staging_a / "x.json").write_text("{}")
        with staged_case_folder(tmp_path / "b") as staging_b:
            (staging_b / "y.json").write_text("{}")
            assert staging_a.is_dir(), "a staging folder of a running process is not stale"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
    assert (tmp_path / "a" / "x.json").is_file() and (tmp_path / "b" / "y.json").is_file()


def test_the_command_refuses_an_unwritable_output_before_loading_the_model(tmpfs, tmp_path, caplog):
    from KidneyTumorSegLib.cli import main

    read_only = tmpfs("size=64k,ro")
    ct = tmp_path / "ct.nii.gz"
    import SimpleITK as sitk

    from KidneyTumorSegLib.io.volume_io import volume_to_sitk

    sitk.WriteImage(volume_to_sitk(make_phantom(1, shape=(16, 32, 32), spacing=(4.0, 4.0, 5.0)).image), str(ct))
    started = time.perf_counter()
    assert main(["segment", str(ct), "-o", str(read_only / "out"), "--model", str(tmp_path / "no-such-model")]) == 2
    assert f"cannot write in the output folder {read_only / 'out'}: Read-only file system" in caplog.text
    assert "no-such-model" not in caplog.text, "refused before the model is even looked at"
    assert time.perf_counter() - started < 5
