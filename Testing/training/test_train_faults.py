"""Faults in training (issue 27): an unreadable checkpoint on --resume, --fold all on a few cases, a run killed
with SIGKILL mid-epoch and resumed."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ktstrain.checkpoint import (
    FINAL,
    LATEST,
    PREVIOUS,
    CheckpointError,
    CheckpointManager,
    epoch_name,
    load_checkpoint,
)
from ktstrain.cli import main as train_main
from ktstrain.config import parse_config
from ktstrain.data import discover_cases
from ktstrain.train import train_stage

TINY_NET = {"channels": [4, 8, 16], "strides": [1, 2, 2], "deep_supervision": True, "deep_supervision_levels": 1}
TRAIN = {"epochs": 3, "iterations_per_epoch": 3, "batch_size": 2, "num_workers": 0, "val_every": 2,
         "checkpoint_every": 1, "lr": 3e-3, "n_folds": 2}
# what torch says of a checkpoint cut in half (the traceback ended in it)
TRUNCATED = "PytorchStreamReader failed reading zip archive: failed finding central directory"


def tiny_dict(**train):
    stage = {"network": TINY_NET, "patch_size": [16, 32, 32], "spacing": [6.0, 4.0, 4.0]}
    return {"role": "kidney", "stage": stage, "train": dict(TRAIN, **train),
            "augment": {"p_rotation": 0.3, "p_scale": 0.3}}


def tiny_config(**train):
    return parse_config(tiny_dict(**train))


def write_config(path: Path, **train) -> Path:
    path.write_text(json.dumps(tiny_dict(**train)))
    return path


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def assert_same(a, b, where: str = "state") -> None:
    """``a`` and ``b`` equal to the bit: tensors by ``torch.equal``, containers item by item."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def same_weights(a: Path, b: Path) -> None:
    assert_same(load_checkpoint(a)["model"], load_checkpoint(b)["model"], "model")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "phantoms"
    from KidneyTumorSegLib.phantom import write_phantom_cases

    write_phantom_cases(root, 4, seed0=300, shape=(32, 96, 96), spacing=(3.5, 3.5, 5.0), n_tumors=1)
    return root


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted 3-epoch run (fold 0) and the cache the other runs share."""
    torch.set_num_threads(1)  # as in the tests (conftest), whose runs must give these weights to the bit
    out = tmp_path_factory.mktemp("reference")
    run = train_stage(tiny_config(), discover_cases(data), out / "kidney_fold0", out / "cache", device="cpu",
                      show_progress=False)
    return run, out / "cache"


def _part_run(data, reference, out: Path, **train) -> Path:
    """The reference run again into ``out``, then made to look killed after epoch 2's checkpoint was written
    (no final checkpoint), with checkpoint_latest.pt (epoch 2) cut in half."""
    run = train_stage(tiny_config(**train), discover_cases(data), out / "kidney_fold0", reference[1],
                      device="cpu", show_progress=False)
    (run / FINAL).unlink()
    truncate(run / LATEST)
    return run


def _resume_args(data, cfg: Path, out: Path, cache: Path):
    return ["train", "--config", str(cfg), "--data", str(data), "--out", str(out), "--cache", str(cache),
            "--fold", "0", "--device", "cpu", "--no-progress", "--resume"]


# --- 1. an unreadable checkpoint -----------------------------------------------------------------------

def test_a_truncated_checkpoint_is_named_in_one_clear_error(tmp_path):
    path = tmp_path / "ck.pt"
    torch.save({"w": torch.ones(1000)}, path)
    truncate(path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == f"checkpoint {path} is truncated or corrupt ({TRUNCATED})"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == f"checkpoint {path} is truncated or corrupt (EOFError)"
    assert isinstance(err.value, ValueError)  # the CLI reports ValueErrors as one line, exit status 1


def test_resume_falls_back_to_the_newest_readable_epoch_checkpoint(data, reference, tmp_path, caplog):
    run = _part_run(data, reference, tmp_path)
    truncate(run / epoch_name(2))  # epoch 2's own epoch checkpoint is damaged too
    caplog.set_level(logging.INFO, logger="ktstrain")
    cfg = write_config(tmp_path / "kidney.json")
    assert train_main(_resume_args(data, cfg, tmp_path, reference[1])) == 0
    latest, fallback = run / LATEST, run / epoch_name(1)
    assert f"checkpoint {latest} is truncated or corrupt ({TRUNCATED})" in caplog.messages
    assert f"checkpoint {run / epoch_name(2)} is truncated or corrupt ({TRUNCATED})" in caplog.messages
    assert f"falling back to the previous checkpoint {fallback} ({latest} is unreadable)" in caplog.messages
    assert f"resuming {run} after epoch 1 ({fallback.name})" in caplog.messages
    same_weights(reference[0] / FINAL, run / FINAL)  # epoch 2 trained again: the uninterrupted run's weights
    assert load_checkpoint(run / LATEST)["epoch"] == 2  # the unreadable file was replaced


def test_a_run_keeping_no_epoch_checkpoints_keeps_the_previous_one_and_falls_back_to_it(data, reference, tmp_path,
                                                                                         caplog):
    run = _part_run(data, reference, tmp_path, keep_last=0)
    assert not CheckpointManager(run).epoch_files()
    assert load_checkpoint(run / PREVIOUS)["epoch"] == 1
    cfg = write_config(tmp_path / "kidney.json", keep_last=0)
    assert train_main(_resume_args(data, cfg, tmp_path, reference[1])) == 0
    latest, previous = run / LATEST, run / PREVIOUS
    assert f"checkpoint {latest} is truncated or corrupt ({TRUNCATED})" in caplog.messages
    assert f"falling back to the previous checkpoint {previous} ({latest} is unreadable)" in caplog.messages
    same_weights(reference[0] / FINAL, run / FINAL)
    # the unreadable file was overwritten, not rotated into checkpoint_previous.pt
    assert load_checkpoint(latest)["epoch"] == 2 and load_checkpoint(previous)["epoch"] == 1


def test_previous_rotation_never_keeps_an_unreadable_file_and_survives_a_kill_between_its_steps(tmp_path, caplog):
    mgr = CheckpointManager(tmp_path, keep_last=0)
    for e in range(3):
        mgr.save({"w": torch.full((2,), float(e))}, e)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LATEST, PREVIOUS])
    assert load_checkpoint(tmp_path / PREVIOUS)["epoch"] == 1
    # killed after checkpoint_latest.pt became checkpoint_previous.pt, before the new one was written
    (tmp_path / LATEST).unlink()
    path, state = CheckpointManager(tmp_path, keep_last=0).resume_state()
    assert (path, state["epoch"]) == (tmp_path / PREVIOUS, 1)
    assert f"{tmp_path / LATEST} is missing: resuming from {tmp_path / PREVIOUS}" in caplog.messages
    # fall back from an unreadable latest, save once: the unreadable file is replaced, previous stays readable
    mgr.save({"w": torch.zeros(2)}, 2)
    truncate(tmp_path / LATEST)
    mgr = CheckpointManager(tmp_path, keep_last=0)
    path, state = mgr.resume_state()
    assert (path, state["epoch"]) == (tmp_path / PREVIOUS, 1)
    mgr.save(dict(state), 2)
    assert load_checkpoint(tmp_path / PREVIOUS)["epoch"] == 1 and load_checkpoint(tmp_path / LATEST)["epoch"] == 2
    mgr.save(dict(state), 3)  # from then on it rotates again
    assert load_checkpoint(tmp_path / PREVIOUS)["epoch"] == 2
    with pytest.raises(FileNotFoundError, match="^--resume: no checkpoint in "):
        CheckpointManager(tmp_path / "empty").resume_state()


def test_resume_without_a_readable_checkpoint_refuses_in_one_line(data, reference, tmp_path):
    cfg = write_config(tmp_path / "kidney.json", keep_last=0, epochs=1)
    run = train_stage(tiny_config(keep_last=0, epochs=1), discover_cases(data), tmp_path / "kidney_fold0",
                      reference[1], device="cpu", show_progress=False)
    truncate(run / LATEST)
    cmd = [sys.executable, "-m", "ktstrain"] + _resume_args(data, cfg, tmp_path, reference[1])
    done = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.startswith("ERROR")]) == 1
    assert done.stderr.splitlines()[-1] == (
        f"ERROR cannot resume: checkpoint {run / LATEST} is truncated or corrupt ({TRUNCATED}) and {run} holds "
        f"no earlier readable checkpoint; start over with --overwrite")


# --- 2. --fold all with fewer cases than folds ---------------------------------------------------------

def test_fold_all_on_fewer_cases_than_folds_makes_fewer_folds(data, reference, tmp_path, caplog):
    cfg = write_config(tmp_path / "kidney.json", n_folds=5, epochs=1)
    args = ["train", "--config", str(cfg), "--data", str(data), "--out", str(tmp_path / "runs"), "--cache",
            str(reference[1]), "--fold", "all", "--device", "cpu", "--no-progress"]
    assert train_main(args) == 0
    assert "only 4 cases: making a 4-fold split instead of the 5 folds configured" in caplog.messages
    split = json.loads((tmp_path / "runs" / "splits.json").read_text())
    assert split["n_folds"] == 4 and sorted(len(f["val"]) for f in split["folds"]) == [1, 1, 1, 1]
    assert load_checkpoint(tmp_path / "runs" / "kidney_foldall" / FINAL)["train_cases"] == [
        f"case_{i:05d}" for i in range(4)]


def test_fold_all_on_one_case_is_refused(data, tmp_path, caplog):
    one = tmp_path / "one"
    one.mkdir()
    (one / "case_00000").symlink_to(data / "case_00000", target_is_directory=True)
    cfg = write_config(tmp_path / "kidney.json", n_folds=5, epochs=1)
    args = ["train", "--config", str(cfg), "--data", str(one), "--out", str(tmp_path / "runs"), "--fold", "all",
            "--device", "cpu", "--no-progress"]
    assert train_main(args) == 1
    assert caplog.messages[-1] == "only 1 case found: a split needs at least 2 cases"
    assert not (tmp_path / "runs").exists()


# --- 3. SIGKILL mid-epoch, then --resume ---------------------------------------------------------------

def _cli(data, cfg: Path, out: Path, cache: Path, *extra):
    return [sys.executable, "-m", "ktstrain", "train", "--config", str(cfg), "--data", str(data), "--out", str(out),
            "--cache", str(cache), "--fold", "0", "--device", "cpu", "--no-progress", *extra]


def test_a_run_killed_mid_epoch_and_resumed_ends_with_the_uninterrupted_runs_weights(data, reference, tmp_path,
                                                                                     caplog):
    """The command in a subprocess killed with SIGKILL in epoch 1 (0-based), after the checkpoint of epoch 0
    was written, then resumed: its final state is the uninterrupted run's to the bit (that run made in this
    process, so the result does not depend on what a process drew before the run either). Epochs of 8 steps
    leave the kill room to land mid-epoch."""
    cfg = write_config(tmp_path / "kidney.json", iterations_per_epoch=8, val_every=1000)
    cache = reference[1]
    full = train_stage(tiny_config(iterations_per_epoch=8, val_every=1000), discover_cases(data),
                       tmp_path / "full" / "kidney_fold0", cache, device="cpu", show_progress=False)
    run = tmp_path / "part" / "kidney_fold0"
    proc = subprocess.Popen(_cli(data, cfg, tmp_path / "part", cache), env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run / LATEST).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.1)  # into epoch 1's steps
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(run / LATEST)["epoch"] == 0 and not (run / FINAL).exists()  # killed during epoch 1
    caplog.set_level(logging.INFO, logger="ktstrain")
    assert train_main(_cli(data, cfg, tmp_path / "part", cache, "--resume")[3:]) == 0
    assert f"resuming {run} after epoch 0 (checkpoint_latest.pt)" in caplog.messages
    a, b = load_checkpoint(full / FINAL), load_checkpoint(run / FINAL)
    for k in ("model", "optimizer", "scheduler", "scaler", "rng", "best", "epoch"):
        assert_same(a[k], b[k], k)  # the whole training state, the global random generators' included
    logs = [(r / "training_log.csv").read_text().splitlines() for r in (full, run)]
    assert logs[0][0].startswith("epoch,lr,train_loss,") and len(logs[0]) == 4
    assert [line.split(",")[:3] for line in logs[0]] == [line.split(",")[:3] for line in logs[1]]
