"""ktstrain.schedules: optimisers and learning-rate schedules, and resuming a schedule from its state."""
from __future__ import annotations

import io
import random

import pytest
import torch

from ktstrain.schedules import build_optimizer, build_scheduler

from helpers_train import tiny_model


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                      ("sgd", torch.optim.SGD)])
def test_build_optimizer(name, cls):
    opt = build_optimizer(tiny_model(), name, lr=0.01, weight_decay=5e-4)
    assert isinstance(opt, cls)
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["weight_decay"] == 5e-4
    if name == "sgd":
        assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.99
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        build_optimizer(tiny_model(), "rmsprop")


def test_poly_and_cosine_values_at_known_epochs():
    opt = build_optimizer(tiny_model(), "sgd", lr=0.01)
    poly = build_scheduler(opt, "poly", max_epochs=1000)
    assert poly.lr_at(0) == pytest.approx(0.01)
    assert poly.lr_at(500) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly.lr_at(999) == pytest.approx(0.01 * 0.001 ** 0.9)
    assert poly.start_epoch(250) == pytest.approx(0.01 * 0.75 ** 0.9)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.75 ** 0.9)
    opt = build_optimizer(tiny_model(), "adam", lr=1e-3)
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
    opt = build_optimizer(tiny_model(), "adam", lr=1e-3)
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
    s1 = build_scheduler(build_optimizer(tiny_model(), lr=1e-3), "plateau_ema", max_epochs=100, patience=3,
                         momentum=0.9)
    for epoch, loss in enumerate([1.0] * 5 + [0.9995] + [1.0] * 30):
        s1.start_epoch(epoch)
        s1.end_epoch(epoch, loss)
    assert s1.reductions == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33]
    # a steadily falling loss never reduces
    s2 = build_scheduler(build_optimizer(tiny_model(), lr=1e-3), "plateau_ema", max_epochs=100, patience=2)
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
    full = run(range(40), build_scheduler(build_optimizer(tiny_model(), lr=1e-3), name, max_epochs=40, **kw))
    first = build_scheduler(build_optimizer(tiny_model(), lr=1e-3), name, max_epochs=40, **kw)
    head = run(range(17), first)
    saved = load_via_torch(first.state_dict())
    opt = build_optimizer(tiny_model(), lr=5.0)  # a resumed run's freshly built optimiser
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
