"""ktstrain.checkpoint: checkpoints round-trip with weights_only loading, unsafe pickles are refused, and the
manager names and prunes them."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from ktstrain.checkpoint import (
    BEST,
    FINAL,
    LATEST,
    CheckpointManager,
    capture_rng,
    epoch_name,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    to_safe,
)
from ktstrain.schedules import build_optimizer, build_scheduler

from helpers_train import tiny_model


def _draws():
    return (random.random(), float(np.random.rand()), float(torch.rand(1)), int(np.random.randint(1 << 30)))


def _train_state():
    model = tiny_model()
    opt = build_optimizer(model, "sgd", lr=0.01)
    sched = build_scheduler(opt, "plateau_ema", max_epochs=10)
    model(torch.randn(1, 1, 4, 4, 4)).sum().backward()
    opt.step()
    sched.start_epoch(0)
    sched.end_epoch(0, 0.5)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    sampler = {"generator": np.random.default_rng(7).bit_generator.state, "order": np.arange(5),
               "weights": np.float32(0.5)}
    return model, opt, sched, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                               "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                               "sampler": sampler, "best_metric": 0.8, "config": {"loss": "dice_ce",
                                                                                  "patch": (64, 96, 96)}}


def test_checkpoint_round_trip_weights_only_restores_everything(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.standard_normal()
    model, opt, sched, state = _train_state()
    state["rng"] = capture_rng()
    expected = _draws()
    path = save_checkpoint(tmp_path / "ck.pt", dict(state, epoch=4))
    _draws()  # move every RNG on
    loaded = load_checkpoint(path)  # weights_only=True
    restore_rng(loaded)
    assert _draws() == expected
    assert loaded["epoch"] == 4 and loaded["best_metric"] == 0.8
    assert loaded["config"] == {"loss": "dice_ce", "patch": (64, 96, 96)}
    assert torch.equal(loaded["sampler"]["order"], torch.arange(5))
    assert loaded["sampler"]["generator"] == np.random.default_rng(7).bit_generator.state  # 128-bit ints survive
    assert loaded["sampler"]["weights"] == 0.5
    model2 = tiny_model()
    model2.load_state_dict(loaded["model"])
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    opt2 = build_optimizer(model2, "sgd", lr=0.01)
    opt2.load_state_dict(loaded["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["momentum_buffer"], opt.state_dict()["state"][0]["momentum_buffer"])
    sched2 = build_scheduler(opt2, "plateau_ema", max_epochs=10)
    sched2.load_state_dict(loaded["scheduler"])
    assert sched2.state_dict() == sched.state_dict()
    with pytest.raises(FileExistsError, match="output exists"):
        save_checkpoint(path, state)


def test_load_refuses_unsafe_pickles_with_a_clear_message(tmp_path):
    torch.save({"x": np.float64(1.0)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="weights_only=False only if you trust"):
        load_checkpoint(tmp_path / "foreign.pt")
    assert load_checkpoint(tmp_path / "foreign.pt", weights_only=False)["x"] == 1.0
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")
    with pytest.raises(TypeError, match=r"state\['bad'\]: a object cannot be stored"):
        to_safe({"bad": object()})


def test_checkpoint_manager_names_and_keeps_last_n(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    state = {"model": {"w": torch.ones(2)}}
    for e in range(5):
        mgr.save(state, e, is_best=(e == 1), final=(e == 4))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([LATEST, BEST, FINAL, epoch_name(3), epoch_name(4)])
    assert epoch_name(3) == "checkpoint_epoch0003.pt"
    assert load_checkpoint(tmp_path / BEST)["epoch"] == 1
    assert load_checkpoint(tmp_path / LATEST)["epoch"] == 4
    assert mgr.latest() == tmp_path / LATEST
    mgr.discard_after(3)
    assert list(mgr.epoch_files()) == [3]
    every = CheckpointManager(tmp_path / "b", keep_last=10, every=2)
    for e in range(5):
        every.save(state, e)
    assert list(every.epoch_files()) == [1, 3]
