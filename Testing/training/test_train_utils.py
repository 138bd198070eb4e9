"""Training utilities: optimisers and LR schedules, CV splits, the epoch log, checkpoints."""
from __future__ import annotations

import io
import json
import logging
import random

import numpy as np
import pytest
import torch
from PIL import Image

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
from ktstrain.logs import COLUMNS, TrainingLog, read_log
from ktstrain.schedules import build_optimizer, build_scheduler
from ktstrain.splits import (
    REPORT000_VALIDATION,
    fold_cases,
    get_or_create_splits,
    load_splits,
    make_folds,
    named_split,
    write_splits,
)

CASES = [f"case_{i:05d}" for i in range(23)]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.InstanceNorm3d(2, affine=True))


# --- optimisers and schedules --------------------------------------------------------------------------

@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                      ("sgd", torch.optim.SGD)])
def test_build_optimizer(name, cls):
    opt = build_optimizer(_model(), name, lr=0.01, weight_decay=5e-4)
    assert isinstance(opt, cls)
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["weight_decay"] == 5e-4
    if name == "sgd":
        assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.99
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        build_optimizer(_model(), "rmsprop")


def test_poly_and_cosine_values_at_known_epochs():
    opt = build_optimizer(_model(), "sgd", lr=0.01)
    poly = build_scheduler(opt, "poly", max_epochs=1000)
    assert poly.lr_at(0) == pytest.approx(0.01)
    assert poly.lr_at(500) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly.lr_at(999) == pytest.approx(0.01 * 0.001 ** 0.9)
    assert poly.start_epoch(250) == pytest.approx(0.01 * 0.75 ** 0.9)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.75 ** 0.9)
    opt = build_optimizer(_model(), "adam", lr=1e-3)
    cos = build_scheduler(opt, "cosine", max_epochs=101, min_lr=1e-7)
    assert cos.lr_at(0) == pytest.approx(1e-3)
    assert cos.lr_at(50) == pytest.approx(1e-7 + (1e-3 - 1e-7) / 2)
    assert cos.lr_at(100) == pytest.approx(1e-7)
    warm = build_scheduler(opt, "poly", max_epochs=110, warmup_epochs=10, warmup_start=0.1)
    assert warm.lr_at(0) == pytest.approx(1e-4) and warm.lr_at(5) == pytest.approx(0.55e-3)
    assert warm.lr_at(10) == pytest.approx(1e-3) and warm.lr_at(60) == pytest.approx(1e-3 * 0.5 ** 0.9)
    with pytest.raises(ValueError, match="unknown LR schedule 'step'"):
        build_scheduler(opt, "step")
    with pytest.raises(ValueError, match="bad parameters for LR schedule 'poly'"):
        build_scheduler(opt, "poly", patience=3)


def test_plateau_ema_reduces_after_patience_flat_epochs():
    opt = build_optimizer(_model(), "adam", lr=1e-3)
    s = build_scheduler(opt, "plateau_ema", max_epochs=200, patience=3, factor=0.2, momentum=0.5)
    lrs = []
    # EMA: 1.0, 0.75 (best), then 1.375, 1.69, ... never better: 3 bad epochs -> cut, 3 more -> cut again
    for epoch, loss in enumerate([1.0, 0.5] + [2.0] * 8):
        lrs.append(s.start_epoch(epoch))
        s.end_epoch(epoch, loss)
    assert s.ema == pytest.approx(2.0 - 1.25 * 0.5 ** 8)
    assert s.reductions == [4, 7]
    assert lrs == pytest.approx([1e-3] * 5 + [2e-4] * 3 + [4e-5] * 2)
    assert opt.param_groups[0]["lr"] == pytest.approx(4e-5)
    # the EMA, not the raw loss, decides: one low outlier among flat losses does not reset the count
    s1 = build_scheduler(build_optimizer(_model(), lr=1e-3), "plateau_ema", max_epochs=100, patience=3,
                         momentum=0.9)
    for epoch, loss in enumerate([1.0] * 5 + [0.9995] + [1.0] * 30):
        s1.start_epoch(epoch)
        s1.end_epoch(epoch, loss)
    assert s1.reductions == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33]
    # a steadily falling loss never reduces
    s2 = build_scheduler(build_optimizer(_model(), lr=1e-3), "plateau_ema", max_epochs=100, patience=2)
    for epoch in range(30):
        s2.start_epoch(epoch)
        s2.end_epoch(epoch, 1.0 / (epoch + 1))
    assert s2.reductions == [] and s2.lr_at(30) == pytest.approx(1e-3)


@pytest.mark.parametrize("name", ["poly", "cosine", "plateau_ema", "constant"])
def test_schedule_resumes_exactly_from_state_dict(name):
    rng = random.Random(1)
    losses = [1.0 + 0.1 * rng.random() for _ in range(40)]  # noisy flat loss: plateau_ema cuts

    def run(epochs, sched):
        out = []
        for e in epochs:
            out.append(sched.start_epoch(e))
            sched.end_epoch(e, losses[e])
        return out

    kw = {"patience": 4} if name == "plateau_ema" else {}
    full = run(range(40), build_scheduler(build_optimizer(_model(), lr=1e-3), name, max_epochs=40, **kw))
    first = build_scheduler(build_optimizer(_model(), lr=1e-3), name, max_epochs=40, **kw)
    head = run(range(17), first)
    saved = load_via_torch(first.state_dict())
    opt = build_optimizer(_model(), lr=5.0)  # a resumed run's freshly built optimiser
    second = build_scheduler(opt, name, max_epochs=40, **kw)
    second.load_state_dict(saved)
    tail = run(range(17, 40), second)
    assert head + tail == full
    if name == "plateau_ema":
        assert second.reductions  # the scenario did exercise a reduction


def load_via_torch(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# --- splits --------------------------------------------------------------------------------------------

def test_folds_are_deterministic_cover_every_case_once_and_do_not_overlap():
    folds = make_folds(CASES, 5, seed=3)
    assert folds == make_folds(list(reversed(CASES)), 5, seed=3)  # input order does not matter
    assert folds != make_folds(CASES, 5, seed=4)
    vals = [c for f in folds for c in f["val"]]
    assert sorted(vals) == CASES
    assert sorted(len(f["val"]) for f in folds) == [4, 4, 5, 5, 5]
    for f in folds:
        assert not set(f["train"]) & set(f["val"])
        assert sorted(f["train"] + f["val"]) == CASES


def test_stratified_folds_spread_tumor_sizes():
    volumes = {c: float(i) for i, c in enumerate(CASES)}  # case i has tumor volume i
    folds = make_folds(CASES, 5, seed=0, tumor_volumes=volumes)
    assert sorted(c for f in folds for c in f["val"]) == CASES
    for f in folds:
        ranks = sorted(int(volumes[c]) // 5 for c in f["val"])
        assert ranks == list(range(len(ranks)))  # one case from each size quintile block
    with pytest.raises(ValueError, match="tumor_volumes lacks 1 case"):
        make_folds(CASES, 5, tumor_volumes={c: 1.0 for c in CASES[1:]})


def test_split_file_is_written_then_honoured_and_validated(tmp_path, caplog):
    path = tmp_path / "splits.json"
    folds = get_or_create_splits(path, CASES, 5, seed=0)
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and doc["n_folds"] == 5 and doc["folds"] == folds
    # a hand-edited split is honoured as written (not regenerated from the seed)
    custom = [{"train": CASES[5:], "val": CASES[:5]}, {"train": CASES[:5], "val": CASES[5:]}]
    write_splits(path, custom, overwrite=True)
    with caplog.at_level(logging.INFO):
        assert get_or_create_splits(path, CASES, 5, seed=0) == custom
    assert "existing split file" in caplog.text and "in no fold" not in caplog.text
    # cases added to the data after the split was written are named, not silently dropped
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert get_or_create_splits(path, CASES + ["case_new1", "case_new0"], 5, seed=0) == custom
    assert (f"2 of the {len(CASES) + 2} cases found are in no fold of {path} and will not be used: "
            "case_new0, case_new1") in caplog.text
    assert fold_cases(custom, 0) == custom[0] and fold_cases(custom, "all")["train"] == CASES
    with pytest.raises(ValueError, match="fold 2 does not exist"):
        fold_cases(custom, 2)
    # nnU-Net's bare-list format reads too
    (tmp_path / "nnunet.json").write_text(json.dumps(custom))
    assert load_splits(tmp_path / "nnunet.json", CASES) == custom
    with pytest.raises(FileExistsError, match="output exists"):
        write_splits(path, custom)


def test_a_run_that_loses_the_race_to_write_the_split_file_uses_the_winners(tmp_path, monkeypatch, caplog):
    # two stages started at once into the same --out: both see no splits.json, one writes it first
    import ktstrain.splits as splits_mod

    path = tmp_path / "splits.json"
    winner = [{"train": CASES[3:], "val": CASES[:3]}]
    real_write = splits_mod.write_splits

    def other_run_wins(p, folds, **kw):
        real_write(p, winner)  # the other run's file lands between our check and our write
        return real_write(p, folds, **kw)  # ours then finds it there

    monkeypatch.setattr(splits_mod, "write_splits", other_run_wins)
    with caplog.at_level(logging.INFO):
        assert get_or_create_splits(path, CASES, 5, seed=0) == winner
    assert "was written by another run meanwhile" in caplog.text
    assert json.loads(path.read_text())["folds"] == winner


def test_split_file_errors_name_the_problem(tmp_path):
    path = tmp_path / "splits.json"
    write_splits(path, [{"train": CASES[1:] + ["case_00999"], "val": CASES[:1]}])
    with pytest.raises(ValueError, match=r"fold 0 names case ids not in the data: case_00999"):
        load_splits(path, CASES)
    with pytest.raises(ValueError, match=r"fold 0 names case ids not in the data: case_00999"):
        get_or_create_splits(path, CASES)
    path.write_text(json.dumps([{"train": CASES[:3], "val": CASES[2:4]}]))
    with pytest.raises(ValueError, match="both trains and validates on case_00002"):
        load_splits(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_splits(path)
    with pytest.raises(FileNotFoundError, match="split file not found"):
        load_splits(tmp_path / "missing.json")


def test_report000_named_split():
    cases = [f"case_{i:05d}" for i in range(210)]
    split = named_split("report000", cases)
    assert split["val"] == sorted(REPORT000_VALIDATION) and len(split["val"]) == 11
    assert len(split["train"]) == 199 and not set(split["train"]) & set(split["val"])
    with pytest.raises(ValueError, match="case_00189, case_00195"):
        named_split("report000", cases[:180])
    partial = named_split("report000", cases[:180], allow_missing=True)
    assert len(partial["val"]) == 9 and "case_00189" not in partial["val"]


# --- training log --------------------------------------------------------------------------------------

def _row(e):
    return dict(lr=1e-3 * (1 - e / 50) ** 0.9, train_loss=1.0 / (e + 1), val_loss=1.2 / (e + 1) if e % 2 else None,
                kidney_dice=0.9 * e / 10, tumor_dice=0.5 * e / 10, composite=0.7 * e / 10, seconds=12.5)


def test_log_appends_and_resume_drops_later_rows(tmp_path):
    log = TrainingLog(tmp_path)
    for e in range(6):
        log.append(e, **_row(e))
    rows = read_log(tmp_path / "training_log.csv")
    assert [r["epoch"] for r in rows] == list(range(6))
    assert rows[3]["train_loss"] == 0.25 and rows[2]["val_loss"] is None
    header = (tmp_path / "training_log.csv").read_text().splitlines()[0]
    assert header == ",".join(COLUMNS)
    with pytest.raises(ValueError, match="epoch 5 is not after the last logged epoch 5"):
        log.append(5, **_row(5))
    # a fresh run must not silently replace the log
    with pytest.raises(FileExistsError, match="training_log.csv"):
        TrainingLog(tmp_path)
    # resume from the checkpoint of epoch 3: rows 4 and 5 were lost with the interrupted run
    resumed = TrainingLog(tmp_path, resume_epoch=3)
    resumed.append(4, **_row(4), grad_norm=2.5)  # a new column extends the header
    resumed.append(5, **_row(5), grad_norm=1.5)
    rows = read_log(tmp_path / "training_log.csv")
    assert [r["epoch"] for r in rows] == list(range(6))
    assert rows[4]["grad_norm"] == 2.5 and rows[0]["grad_norm"] is None
    assert TrainingLog(tmp_path, overwrite=True).rows == []


def test_progress_png_is_a_valid_image(tmp_path):
    log = TrainingLog(tmp_path)
    log.append(0, **_row(0))  # a single point must plot too
    for e in range(1, 12):
        log.append(e, **_row(e))
    with Image.open(tmp_path / "progress.png") as img:
        img.verify()
    with Image.open(tmp_path / "progress.png") as img:
        assert img.format == "PNG" and img.size == (1000, 900)
        arr = np.asarray(img.convert("RGB"))
    # the train-loss colour is drawn (curves exist, not just axes)
    assert ((arr == (31, 119, 180)).all(-1)).sum() > 100
    assert not list(tmp_path.glob(".tmp-*"))


def test_tensorboard_missing_is_a_warning_not_a_crash(tmp_path, caplog, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_tensorboard(name, *a, **k):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with caplog.at_level(logging.WARNING):
        log = TrainingLog(tmp_path, tensorboard=True)
    assert log.writer is None and "tensorboard" in caplog.text
    log.append(0, **_row(0))
    log.close()


# --- checkpoints ---------------------------------------------------------------------------------------

def _draws():
    return (random.random(), float(np.random.rand()), float(torch.rand(1)), int(np.random.randint(1 << 30)))


def _train_state():
    model = _model()
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
    model2 = _model()
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


def test_every_shipped_training_configuration_parses_and_keeps_the_method_spacings():
    from pathlib import Path

    from KidneyTumorSegLib.presets import default_stages
    from ktstrain.config import load_config, parse_config

    root = Path(__file__).resolve().parents[2] / "training" / "configs"
    paths = sorted(root.rglob("*.json"))
    assert len(paths) >= 9
    presets = {s.role: s for s in default_stages()}
    for p in paths:
        cfg = load_config(p)
        assert cfg.stage.spacing == presets[cfg.stage.role].spacing, p  # the reports' spacings, CPU-sized or not
        assert cfg.stage.window == presets[cfg.stage.role].window, p
        # the complete form a run writes into its checkpoints is itself a configuration that gives the same run
        again = parse_config(cfg.to_dict())
        assert again.to_dict() == cfg.to_dict() and again.preprocess == cfg.preprocess, p
