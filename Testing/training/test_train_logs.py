"""ktstrain.logs: the epoch log (CSV, resume), its progress plot and the optional TensorBoard writer."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from ktstrain.logs import COLUMNS, TrainingLog, read_log


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
