"""Batch runs of ``kidneytumorseg segment`` (``batch``): two gloo ranks under torchrun, killed and resumed; one
process over a CSV list with failing cases. Every case is done exactly once and the summary lists every case."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from KidneyTumorSegLib.cli import main
from KidneyTumorSegLib.io.outputs import SUFFIXES
from helpers_bundle import make_tiny_bundle

N_CASES = 12
SMALL = ["--shape", "16", "48", "48", "--spacing", "7", "7", "10", "--tumors", "1"]
FILES = [SUFFIXES[k] for k in ("label", "segmentation", "report", "preview")]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    out = tmp_path_factory.mktemp("batch") / "cases"
    assert main(["phantom", str(out), "-n", str(N_CASES), "--seed", "40"] + SMALL) == 0
    return out


@pytest.fixture(scope="module")
def fg_bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("b") / "fg", fg_bias=8.0).path


def _summary(out: Path):
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def _complete(out: Path):
    if not out.is_dir():
        return []
    return sorted(d.name for d in out.iterdir() if d.is_dir() and not d.name.startswith(".")
                  and all((d / f"{d.name}{s}").is_file() for s in FILES))


def _kill_every_process_naming(text: str) -> None:
    """SIGKILL every process whose command line names ``text`` (Linux /proc)."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def _torchrun(args, **kw):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "KidneyTumorSegLib", "segment"] + [str(a) for a in args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kw)


def test_two_ranks_killed_then_resumed_do_every_case_once(phantoms, fg_bundle, tmp_path):
    out = tmp_path / "out"
    args = [phantoms, "-o", out, "--model", fg_bundle, "--device", "cpu", "--threads", "1", "--no-progress"]
    first = _torchrun(args)
    deadline = time.time() + 120
    while len(_complete(out)) < 3 and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    assert first.poll() is None, first.communicate()[0][-3000:]
    # the whole run mid-way, as a scheduler kills a job: torchrun and its workers (in sessions of their own)
    _kill_every_process_naming(str(out))
    first.wait()
    time.sleep(0.5)
    done_before = _complete(out)
    assert 3 <= len(done_before) < N_CASES, "the run was to be killed part-way"
    assert not (out / "summary.csv").exists()

    second = _torchrun(args + ["--resume"])
    text = second.communicate(timeout=300)[0]
    assert second.returncode == 0, text[-3000:]
    rows = _summary(out)
    assert sorted(r["case"] for r in rows) == [f"case_{n:05d}" for n in range(N_CASES)]
    assert sorted(r["case"] for r in rows if r["status"] == "skipped") == done_before
    done = [r for r in rows if r["status"] == "done"]
    assert len(done) == N_CASES - len(done_before) and {r["rank"] for r in done} == {"0", "1"}
    # exactly once: the two ranks' logs of the resumed run hold each pending case once
    logged = [json.loads(line)["case"] for r in (0, 1) for line in (out / ".batch" / f"rank{r}.jsonl").read_text()
              .splitlines() if "case" in json.loads(line)]
    assert sorted(logged) == sorted(r["case"] for r in done)
    assert len(_complete(out)) == N_CASES
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-case-")], "staging left by the kill"
    assert "all ranks:" in text and "cases/min" in text


def test_one_process_over_a_csv_list_records_failures_and_goes_on(phantoms, fg_bundle, tmp_path, caplog):
    bad = tmp_path / "notct.nii.gz"
    bad.write_bytes(b"not an image")
    listing = tmp_path / "cases.csv"
    listing.write_text("path,case_id\n" + f"{phantoms / 'case_00000'},first\n" + f"{bad},broken\n"
                       + "missing/scan.nii.gz,gone\n" + f"{phantoms / 'case_00001'},\n")
    out = tmp_path / "out"
    assert main(["segment", str(listing), "-o", str(out), "--model", str(fg_bundle), "--device", "cpu",
                 "--no-progress"]) == 1
    rows = {r["case"]: r for r in _summary(out)}
    assert sorted(rows) == ["broken", "case_00001", "first", "gone"]
    assert rows["first"]["status"] == rows["case_00001"]["status"] == "done"
    assert rows["broken"]["status"] == "failed" and "notct.nii.gz" in rows["broken"]["reason"]
    assert rows["gone"]["status"] == "failed" and "missing" in rows["gone"]["reason"]
    assert _complete(out) == ["case_00001", "first"]
    # again without --resume: the summary is not replaced silently
    before = (out / "summary.csv").read_bytes()
    assert main(["segment", str(listing), "-o", str(out), "--model", str(fg_bundle), "--device", "cpu"]) == 2
    assert "use --resume to go on with that run" in caplog.text and (out / "summary.csv").read_bytes() == before
    # resumed: the two done cases are skipped, the two failures tried (and failing) again
    assert main(["segment", str(listing), "-o", str(out), "--model", str(fg_bundle), "--device", "cpu",
                 "--no-progress", "--resume"]) == 1
    rows = {r["case"]: r["status"] for r in _summary(out)}
    assert rows == {"first": "skipped", "case_00001": "skipped", "broken": "failed", "gone": "failed"}


def test_a_case_list_with_an_unsafe_case_id_is_refused(tmp_path, caplog):
    listing = tmp_path / "cases.csv"
    listing.write_text("path,case_id\nx.nii.gz,../escape\n")
    assert main(["segment", str(listing), "-o", str(tmp_path / "out")]) == 2
    assert "case id '../escape' must be letters, digits" in caplog.text and not (tmp_path / "out").exists()
