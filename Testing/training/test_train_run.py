"""Tiny real training runs on CPU: the loss falls, resume is exact, --init starts from earlier weights,
and DDP under torchrun keeps the ranks in step."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from KidneyTumorSegLib.bundles.bundle import load_bundle
from KidneyTumorSegLib.cli import main as kts_main
from ktstrain.checkpoint import load_checkpoint
from ktstrain.cli import main as train_main
from ktstrain.config import parse_config
from ktstrain.export import export_bundle
from ktstrain.train import train_stage

from helpers_train import TINY_NET, TRAIN, tiny_config, train_log

# module-scoped fixtures from helpers_train (this module gets its own copy): pytest finds them by these names


def test_training_lowers_the_loss_and_logs(runs):
    out, done = runs
    for role, run in done.items():
        rows = train_log(run)
        assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
        losses = [float(r["train_loss"]) for r in rows]
        assert losses[-1] < losses[0], (role, losses)
        assert (run / "progress.png").stat().st_size > 1000
        assert (run / "checkpoint_final.pt").exists() and (run / "checkpoint_best.pt").exists()
        dice_col = "tumor_dice" if role == "tumor" else "kidney_dice"
        assert rows[1][dice_col] != "" and rows[3][dice_col] != ""
    split = json.loads((out / "splits.json").read_text())
    assert len(split["folds"]) == 2


def test_final_stage_carries_training_intensity_statistics(runs):
    _, done = runs
    st = load_checkpoint(done["kidney"] / "checkpoint_final.pt")["stage"]
    assert st["norm_std"] > 10 and st["norm_mean"] != 0.0  # from the training data, not the preset


def test_resume_continues_exactly(phantoms, tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_config("kidney")
    full = train_stage(cfg, phantoms, tmp_path / "full", tmp_path / "cache", device="cpu", show_progress=False)
    # the same run "killed" after epoch 1, then resumed
    part = train_stage(cfg, phantoms, tmp_path / "part", tmp_path / "cache", device="cpu", show_progress=False)
    import shutil

    # simulate the kill: restore the state after epoch 1 and drop what came later
    ck = load_checkpoint(part / "checkpoint_epoch0001.pt")
    assert int(ck["epoch"]) == 1
    shutil.copy(part / "checkpoint_epoch0001.pt", part / "checkpoint_latest.pt")
    for name in ("checkpoint_final.pt", "checkpoint_epoch0002.pt", "checkpoint_epoch0003.pt"):
        (part / name).unlink()
    train_stage(cfg, phantoms, part, tmp_path / "cache", device="cpu", show_progress=False, resume=True)
    a = load_checkpoint(full / "checkpoint_final.pt")["model"]
    b = load_checkpoint(part / "checkpoint_final.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["train_loss"] for r in train_log(full)] == [r["train_loss"] for r in train_log(part)]


def test_fit_epochs_keeps_a_run_inside_its_time_budget():
    from ktstrain.train import fit_epochs

    # after epoch 0, 100 s left at 10 s an epoch: 10 more, 11 in all
    assert fit_epochs(0, 10.0, 100.0, 1000) == 11
    assert fit_epochs(0, 10.0, 105.0, 1000) == 11  # only whole epochs
    assert fit_epochs(0, 10.0, 1e6, 50) == 50  # never beyond the configuration's epochs
    assert fit_epochs(7, 10.0, -3.0, 1000) == 8  # time is up: this epoch was the last
    assert fit_epochs(0, 10.0, 5.0, 1000, warmup_epochs=2) == 3  # a warm-up schedule stays valid


def test_time_budget_shortens_the_run_and_its_schedule(phantoms, tmp_path, caplog):
    torch.set_num_threads(1)
    cfg = tiny_config("kidney", epochs=1000, checkpoint_every=1000, val_every=1000)
    budget = 6.0
    import logging
    import time

    caplog.set_level(logging.INFO, logger="ktstrain.train")
    t = time.perf_counter()
    run = train_stage(cfg, phantoms, tmp_path / "run", tmp_path / "cache", fold="all", device="cpu",
                      show_progress=False, time_budget_s=budget)
    wall = time.perf_counter() - t
    rows = train_log(run)
    pace = max(float(r["seconds"]) for r in rows)
    assert wall <= budget + pace + 1.0, (wall, pace)
    ck = load_checkpoint(run / "checkpoint_final.pt")
    assert 2 <= len(rows) < 1000 and ck["epochs"] == len(rows) == int(ck["epoch"]) + 1
    # the poly schedule ran to its (new) end: the last epoch's rate is a small fraction of the first
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[-1] < 0.35 * lrs[0], lrs
    assert "epochs planned (was 1000)" in caplog.text


def test_time_budget_is_refused_with_resume_or_when_not_positive(phantoms, tmp_path):
    cfg = tiny_config("kidney")
    with pytest.raises(ValueError, match="a time budget cannot be combined with --resume"):
        train_stage(cfg, phantoms, tmp_path / "r", tmp_path / "cache", device="cpu", resume=True, time_budget_s=60)
    with pytest.raises(ValueError, match="time budget must be positive, got 0 s"):
        train_stage(cfg, phantoms, tmp_path / "r", tmp_path / "cache", device="cpu", time_budget_s=0)
    assert not (tmp_path / "r").exists()


def test_init_starts_from_another_runs_weights(phantoms, runs, tmp_path):
    torch.set_num_threads(1)
    _, done = runs
    src = load_checkpoint(done["kidney"] / "checkpoint_final.pt")["model"]
    # one epoch at a negligible learning rate: the weights must still be the source run's
    cfg = tiny_config("kidney", epochs=1, lr=1e-20, channels_last=True)
    run = train_stage(cfg, phantoms, tmp_path / "warm", tmp_path / "cache", device="cpu", show_progress=False,
                      init=done["kidney"])
    state = load_checkpoint(run / "checkpoint_final.pt")
    assert state["init_from"] == str(done["kidney"] / "checkpoint_final.pt")
    for k, v in src.items():
        assert torch.allclose(state["model"][k], v, rtol=0, atol=1e-12), k
    assert json.loads((run / "config.json").read_text())["init_from"] == state["init_from"]
    # the bundle's provenance names the run it started from
    b = export_bundle({"roi": [done["roi"]], "kidney": [run], "tumor": [done["tumor"]]}, tmp_path / "model")
    chain = b.provenance["members"]["kidney"][0]["init_from"]
    assert chain == [{"checkpoint": state["init_from"], "epoch": 4, "train_cases": 2}]
    # a different architecture is refused before anything is written
    other = parse_config({"role": "kidney", "stage": {"network": dict(TINY_NET, channels=[4, 8, 32]),
                                                      "patch_size": [16, 32, 32], "spacing": [6.0, 4.0, 4.0]},
                          "train": TRAIN})
    with pytest.raises(ValueError, match="different network"):
        train_stage(other, phantoms, tmp_path / "bad", tmp_path / "cache", device="cpu", show_progress=False,
                    init=done["kidney"])
    assert not (tmp_path / "bad").exists()
    with pytest.raises(FileNotFoundError, match="no checkpoint_final.pt"):
        train_stage(cfg, phantoms, tmp_path / "bad2", tmp_path / "cache", device="cpu", show_progress=False,
                    init=tmp_path)


def test_init_from_a_bundle_weight_file(phantoms, runs, tmp_path):
    """--init takes a shipped bundle's safetensors file; the provenance records its SHA-256."""
    torch.set_num_threads(1)
    _, done = runs
    b = export_bundle({"roi": [done["roi"]], "kidney": [done["kidney"]], "tumor": [done["tumor"]]}, tmp_path / "m0")
    wfile = b.path / "kidney_0.safetensors"
    cfg = tiny_config("kidney", epochs=1, lr=1e-20)
    run = train_stage(cfg, phantoms, tmp_path / "warm", tmp_path / "cache", device="cpu", show_progress=False,
                      init=wfile)
    state = load_checkpoint(run / "checkpoint_final.pt")
    src = load_checkpoint(done["kidney"] / "checkpoint_final.pt")["model"]
    for k, v in src.items():
        assert torch.allclose(state["model"][k], v, rtol=0, atol=1e-12), k
    # the new kidney stage beside the earlier bundle's ROI stage, taken over unchanged
    b2 = export_bundle({"roi": [b.path], "kidney": [run], "tumor": [done["tumor"]]}, tmp_path / "m1")
    chain = b2.provenance["members"]["kidney"][0]["init_from"]
    assert chain == [{"checkpoint": str(wfile), "sha256": b.files["kidney_0.safetensors"]}]
    assert b2.files["roi_0.safetensors"] == b.files["roi_0.safetensors"]
    assert b2.stage("roi") == b.stage("roi")
    roi = b2.provenance["members"]["roi"][0]
    assert roi["bundle"] == "m0" and roi["sha256"] == [b.files["roi_0.safetensors"]]
    assert roi["members"] == b.provenance["members"]["roi"]
    # beside a run, a bundle's stage joins the ensemble (all its weight files) with its provenance
    b3 = export_bundle({"roi": [b.path, done["roi"]], "kidney": [run], "tumor": [done["tumor"]]}, tmp_path / "m2")
    assert b3.stage("roi").weights == ("roi_0.safetensors", "roi_1.safetensors")
    assert [m.get("bundle", m.get("run")) for m in b3.provenance["members"]["roi"]] == ["m0", "roi"]
    assert b3.files["roi_0.safetensors"] == b.files["roi_0.safetensors"]
    assert b3.stage("roi").member_norm == ()  # the same training run twice: one set of statistics


def test_three_class_kidney_stage_from_a_two_class_one(phantoms, runs, tmp_path):
    """A kidney stage with kidney and tumor as separate classes, started from a two-class run: --init widens
    the head (the tumor class starts as a copy of kidney+tumor), it trains on labels 0/1/2, and its bundle
    loads with the foreground channels and segments."""
    torch.set_num_threads(1)
    _, done = runs
    src = load_checkpoint(done["kidney"] / "checkpoint_final.pt")["model"]
    stage = {"network": dict(TINY_NET, out_channels=3), "patch_size": [16, 32, 32], "spacing": [6.0, 4.0, 4.0],
             "labels": ["background", "kidney", "tumor"], "foreground_channels": [1, 2]}
    cfg = parse_config({"role": "kidney", "stage": stage, "train": dict(TRAIN, epochs=2, tumor_fraction=0.3)})
    # one epoch at a negligible learning rate: the widened head is the source head plus a copy of its last class
    still = train_stage(parse_config({"role": "kidney", "stage": stage, "train": dict(TRAIN, epochs=1, lr=1e-20)}),
                        phantoms, tmp_path / "still", tmp_path / "cache", device="cpu", show_progress=False,
                        init=done["kidney"])
    widened = load_checkpoint(still / "checkpoint_final.pt")["model"]
    for k, v in src.items():
        w = widened[k]
        if k.startswith("seg_heads."):
            assert w.shape[0] == 3 and torch.allclose(w[:2], v, atol=1e-12), k
            assert torch.allclose(w[2], v[1], atol=1e-12), k
        else:
            assert torch.allclose(w, v, atol=1e-12), k
    run = train_stage(cfg, phantoms, tmp_path / "k3", tmp_path / "cache", device="cpu", show_progress=False,
                      init=done["kidney"])
    rows = train_log(run)
    assert len(rows) == 2 and all(float(r["train_loss"]) > 0 for r in rows)
    exported = export_bundle({"roi": [done["roi"]], "kidney": [run], "tumor": [done["tumor"]]}, tmp_path / "m")
    b = load_bundle(exported.path)
    assert b.stages["kidney"].network.out_channels == 3
    assert b.stages["kidney"].foreground_channels == (1, 2)
    case = Path(phantoms[0].image_path).parent
    rc = kts_main(["segment", str(case), "-o", str(tmp_path / "out"), "--model", str(b.path), "--device", "cpu"])
    assert rc in (0, 1)  # a 2-epoch model may or may not find a kidney; the command must end cleanly


def test_channels_last_trains_the_same_network(phantoms, tmp_path):
    torch.set_num_threads(1)
    a = train_stage(tiny_config("tumor", epochs=2), phantoms, tmp_path / "a", tmp_path / "cache", device="cpu",
                    show_progress=False)
    b = train_stage(tiny_config("tumor", epochs=2, channels_last=True), phantoms, tmp_path / "b", tmp_path / "cache",
                    device="cpu", show_progress=False)
    la = [float(r["train_loss"]) for r in train_log(a)]
    lb = [float(r["train_loss"]) for r in train_log(b)]
    assert la == pytest.approx(lb, rel=1e-3)  # only the memory layout differs


def test_refuses_to_restart_over_a_run_without_flags(phantoms, runs):
    out, done = runs
    with pytest.raises(FileExistsError, match="use --resume"):
        train_stage(tiny_config("roi"), phantoms, done["roi"], out / "cache", device="cpu", show_progress=False)


def test_train_cli_errors_are_clear(tmp_path, caplog):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"role": "kidney", "train": {"epochz": 3}}))
    assert train_main(["train", "--config", str(bad), "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 1
    assert "unknown field(s) epochz" in caplog.text


def test_torchrun_ddp_on_cpu_keeps_ranks_in_step_and_splits_the_data(phantoms, tmp_path):
    """Issue 3 part 5: the same code under torchrun (two CPU ranks, gloo): every step both ranks train on
    different patches and end it with the same weights; rank 0 alone logs and checkpoints."""
    import hashlib
    import os
    import socket
    import subprocess
    import sys

    cfg = tiny_config("kidney")
    (tmp_path / "kidney.json").write_text(json.dumps(cfg.to_dict()))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    data = Path(phantoms[0].image_path).parents[1]
    probe = tmp_path / "probe"
    probe.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", str(Path(__file__).with_name("ddp_probe.py")), str(probe),
           "train", "--config", str(tmp_path / "kidney.json"), "--data", str(data), "--out", str(tmp_path / "runs"),
           "--cache", str(tmp_path / "cache"), "--fold", "0", "--device", "cpu", "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [[json.loads(line) for line in (probe / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    steps = TRAIN["epochs"] * TRAIN["iterations_per_epoch"]
    assert [len(r) for r in ranks] == [steps, steps]  # each rank its share: iterations_per_epoch a rank
    for a, b in zip(*ranks):
        assert a["batch"] != b["batch"]  # the data is split across ranks
        assert a["params"] == b["params"]  # gradients averaged: the same weights after every step
    assert len({s["batch"] for r in ranks for s in r}) == 2 * steps
    assert len({s["params"] for s in ranks[0]}) == steps  # and they did change every step
    run = tmp_path / "runs" / "kidney_fold0"
    rows = train_log(run)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]  # one log, written once (rank 0)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    state = load_checkpoint(run / "checkpoint_final.pt")["model"]
    h = hashlib.sha256()
    for name in ranks[0][-1]["names"]:
        h.update(state[name].contiguous().numpy().tobytes())
    assert h.hexdigest() == ranks[1][-1]["params"]  # rank 0's checkpoint holds the weights both ranks ended with
