"""Training losses: MONAI / hand values, learning on a toy problem, deep supervision, regression heads."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss

from KidneyTumorSegLib.config import NetworkConfig
from KidneyTumorSegLib.engine.networks import build_network
from ktstrain.losses import (
    LOSSES,
    DeepSupervisionLoss,
    WeightedMSELoss,
    build_loss,
    build_training_loss,
    class_weights_from_counts,
    downsample_labels,
)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _labels(shape=(2, 8, 12, 12), classes=3):
    """Blob-like labels: kidney box with a tumor box inside, per sample at different places."""
    t = torch.zeros(shape, dtype=torch.long)
    for n in range(shape[0]):
        t[n, 1:7, 2 + n:10, 1:9 + n] = 1
        if classes > 2:
            t[n, 2:5, 4:7, 3 + n:6 + n] = 2
    return t


def _onehot_logits(t, classes, scale=30.0):
    return scale * (F.one_hot(t, classes).movedim(-1, 1).float() * 2 - 1)


def _fg_overlaps(logits, t, classes):
    p = torch.softmax(logits, 1)
    g = F.one_hot(t, classes).movedim(-1, 1).float()
    dims = tuple(range(2, logits.dim()))
    return (p * g).sum(dims)[:, 1:], p.sum(dims)[:, 1:], g.sum(dims)[:, 1:]


def test_dice_ce_equals_monai():
    logits = torch.randn(2, 3, 8, 12, 12)
    t = _labels()
    ref = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True)(logits, t[:, None])
    assert torch.allclose(build_loss("dice_ce")(logits, t), ref, atol=1e-6)
    assert torch.allclose(build_loss()(logits, t[:, None]), ref, atol=1e-6)  # (N, 1, ...) target too


def test_soft_jaccard_and_tversky_match_hand_formulas():
    logits = torch.randn(2, 3, 8, 12, 12)
    t = _labels()
    inter, p, g = _fg_overlaps(logits, t, 3)
    eps = 1e-5
    jac = (1 - (inter + eps) / (p + g - inter + eps)).mean()
    assert torch.allclose(build_loss("soft_jaccard")(logits, t), jac, atol=1e-5)
    fp, fn = p - inter, g - inter
    tv = (1 - (inter + eps) / (inter + 0.3 * fp + 0.7 * fn + eps)).mean()
    assert torch.allclose(build_loss("tversky")(logits, t), tv, atol=1e-5)
    tv55 = (1 - (inter + eps) / (inter + 0.5 * fp + 0.5 * fn + eps)).mean()
    assert torch.allclose(build_loss("tversky", alpha=0.5, beta=0.5)(logits, t), tv55, atol=1e-5)


def test_tversky_with_beta_above_alpha_punishes_misses_more_than_false_alarms():
    t = _labels(classes=2)
    missed = t.clone()
    missed[:, :, :, :5] = 0
    n_missed = int((t.bool() & ~missed.bool()).sum())
    extra = t.clone()
    extra[tuple((t == 0).nonzero()[:n_missed].T)] = 1  # as many false alarms as missed voxels
    loss = build_loss("tversky")
    assert float(loss(_onehot_logits(missed, 2), t)) > float(loss(_onehot_logits(extra, 2), t)) + 0.05


def test_weighted_ce_dice_and_focal_dice_match_their_terms():
    logits = torch.randn(2, 3, 8, 12, 12)
    t = _labels()
    w = [0.5, 1.0, 4.0]
    dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True)(logits, t[:, None])
    ce_w = F.cross_entropy(logits, t, weight=torch.tensor(w))
    assert torch.allclose(build_loss("wce_dice", class_weights=w)(logits, t), dice + ce_w, atol=1e-5)
    # focal with gamma 0 is cross-entropy averaged over the class axis too (MONAI's mean over all elements)
    ce = F.cross_entropy(logits, t)
    assert torch.allclose(build_loss("focal_dice", gamma=0.0)(logits, t), dice + ce / 3, atol=1e-5)
    # class weights weigh Dice per foreground class (report 002's weighted Dice)
    wd = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, weight=w[1:])(logits, t[:, None])
    lam = build_loss("focal_dice", class_weights=w, lambda_voxel=0.0)
    assert torch.allclose(lam(logits, t), wd, atol=1e-6)


def test_wce_dice_without_weights_is_dice_ce_and_warns(caplog):
    logits = torch.randn(2, 3, 8, 12, 12)
    t = _labels()
    with caplog.at_level(logging.WARNING):
        loss = build_loss("wce_dice")
    assert "without class_weights" in caplog.text
    assert torch.allclose(loss(logits, t), build_loss("dice_ce")(logits, t))


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("channels", [3, 1])
def test_perfect_prediction_is_near_zero(name, channels):
    classes = max(channels, 2)
    t = _labels(classes=classes)
    logits = _onehot_logits(t, classes)
    if channels == 1:
        logits = logits[:, 1:] - logits[:, :1]
    assert float(build_loss(name)(logits, t)) < 1e-3


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("channels", [3, 1])
def test_gradient_steps_decrease_every_loss(name, channels):
    t = _labels(classes=max(channels, 2))
    params = {"class_weights": [1.0, 2.0, 3.0][:max(channels, 2)]} if name in ("wce_dice", "focal_dice") else {}
    loss_fn = build_loss(name, **params)
    logits = torch.zeros((2, channels) + tuple(t.shape[1:]), requires_grad=True)
    with torch.no_grad():
        logits.add_(0.01 * torch.randn_like(logits))
    opt = torch.optim.Adam([logits], lr=0.1)
    first = float(loss_fn(logits, t).detach())
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(logits, t)
        loss.backward()
        opt.step()
    last = float(loss_fn(logits, t).detach())
    assert last < 0.5 * first, (name, first, last)


def test_binary_channel_uses_sigmoid_and_pos_weight():
    t = _labels(classes=2)
    logits = torch.randn(2, 1, 8, 12, 12)
    ref = F.binary_cross_entropy_with_logits(logits, t[:, None].float(), pos_weight=torch.tensor([3.0]))
    assert torch.allclose(build_loss("ce", class_weights=[1.0, 3.0])(logits, t), ref, atol=1e-6)
    dice = DiceLoss(sigmoid=True)(logits, t[:, None].float())
    assert torch.allclose(build_loss("dice")(logits, t), dice, atol=1e-6)


def test_loss_errors_are_clear():
    with pytest.raises(ValueError, match="unknown loss 'dice_bce'"):
        build_loss("dice_bce")
    with pytest.raises(ValueError, match=r"does not take \['alpha'\]"):
        build_loss("dice_ce", alpha=0.3)
    with pytest.raises(ValueError, match=r"labels span \[0, 2\] but the logits have 2 channel"):
        build_loss()(torch.randn(2, 2, 8, 12, 12), _labels())
    with pytest.raises(ValueError, match="does not match logits"):
        build_loss()(torch.randn(2, 3, 8, 12, 12), _labels()[:, :4])
    with pytest.raises(ValueError, match="built with 2 class weights"):
        build_loss("wce_dice", class_weights=[1, 2])(torch.randn(2, 3, 8, 12, 12), _labels())


def test_class_weights_from_counts():
    w = class_weights_from_counts([900, 90, 10], power=1.0)
    assert w[0] < w[1] < w[2]
    assert abs(sum(w) / 3 - 1) < 1e-12
    assert abs(w[2] / w[1] - 9.0) < 1e-9
    assert class_weights_from_counts([100, 0])[1] == max(class_weights_from_counts([100, 0]))
    with pytest.raises(ValueError):
        class_weights_from_counts([5])


# --- deep supervision ----------------------------------------------------------------------------------

def test_downsample_labels_nearest_takes_the_stride_centres_and_max_keeps_small_tumors():
    t = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    t[0, 2:6, 2:6, 2:6] = 1
    t[0, 3, 3, 3] = 2  # one tumor voxel at an odd index
    near = downsample_labels(t, (4, 4, 4))
    assert torch.equal(near, t[:, ::2, ::2, ::2])
    assert int(near.max()) == 1  # nearest loses the single voxel ...
    mx = downsample_labels(t, (4, 4, 4), mode="max")
    assert mx.dtype == t.dtype and int(mx[0, 1, 1, 1]) == 2  # ... max keeps it
    assert torch.equal(downsample_labels(t, (8, 8, 8)), t)
    assert torch.equal(downsample_labels(t[:, 3], (4, 4), mode="max"), mx[:, 1])  # 2D stages too
    with pytest.raises(ValueError, match="unknown downsampling mode"):
        downsample_labels(t, (4, 4, 4), mode="linear")


def test_default_weights_halve_per_level_and_are_normalised():
    ds = DeepSupervisionLoss(build_loss(), levels=3)
    w = ds.weights_at(0, 100)
    assert w == pytest.approx([1 / 1.75, 0.5 / 1.75, 0.25 / 1.75])
    assert DeepSupervisionLoss(build_loss(), weights=[2, 2]).weights_at(5, 10) == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="3 deep supervision weights but the network returned 2"):
        DeepSupervisionLoss(build_loss(), weights=[1, 1, 1]).weights_at(0, 10, n_outputs=2)


def test_report002_step_decay_of_auxiliary_weights():
    ds = DeepSupervisionLoss(build_loss("dice"), weights=[1, 1, 1, 1],
                             decay={"initial": 0.33, "factor": 0.8, "every": 15})
    for epoch, p in [(0, 0.33), (14, 0.33), (15, 0.33 * 0.8), (44, 0.33 * 0.8 ** 2), (45, 0.33 * 0.8 ** 3)]:
        assert ds.aux_factor(epoch, 500) == pytest.approx(p)
        assert ds.weights_at(epoch, 500) == pytest.approx([1 / (1 + 3 * p)] + [p / (1 + 3 * p)] * 3)
    lin = DeepSupervisionLoss(build_loss(), levels=2, decay={"initial": 1.0, "until": "end"})
    assert lin.weights_at(0, 11) == pytest.approx([1 / 1.5, 0.5 / 1.5])
    assert lin.weights_at(10, 11) == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError, match="decay needs"):
        DeepSupervisionLoss(build_loss(), decay={"factor": 0.8})


def test_deep_supervision_loss_is_the_weighted_sum_over_downsampled_targets():
    base = build_loss()
    t = _labels(shape=(2, 8, 16, 16))
    outs = [torch.randn(2, 3, 8, 16, 16), torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 2, 4, 4)]
    ds = DeepSupervisionLoss(base, levels=3)
    ds.set_epoch(3, 10)
    w = ds.weights_at(3, 10)
    ref = sum(wi * base(o, t[:, ::s, ::s, ::s]) for wi, o, s in zip(w, outs, (1, 2, 4)))
    assert torch.allclose(ds(outs, t), ref, atol=1e-6)
    assert set(ds.last_terms) == {"seg0", "seg1", "seg2"}
    # eval-mode / no-deep-supervision output: the base loss itself
    assert torch.allclose(ds(outs[0], t), base(outs[0], t))
    with pytest.raises(ValueError, match="expected 3 segmentation outputs, got 2"):
        ds(outs[:2], t)


def test_weighted_mse_matches_report003_formula():
    pred = torch.tensor([[[0.5, 0.0, 0.2, 1.0]]])
    target = torch.tensor([[[1.0, 0.0, 0.0, 0.5]]])
    pos = ((0.5 - 1.0) ** 2 + (1.0 - 0.5) ** 2) / (1.0 + 0.5)
    neg = (0.0 ** 2 + 0.2 ** 2) / 2
    assert float(WeightedMSELoss()(pred, target)) == pytest.approx((pos + neg) / 2)
    assert float(WeightedMSELoss()(pred, torch.zeros_like(pred))) == pytest.approx((0.25 + 0.04 + 1.0) / 4)
    with pytest.raises(ValueError, match="differ"):
        WeightedMSELoss()(pred, target[..., :2])


def test_real_network_with_deep_supervision_and_a_head_trains():
    cfg = NetworkConfig(architecture="resunet", channels=(4, 8, 16), strides=(1, 2, 2), out_channels=3,
                        deep_supervision=True, deep_supervision_levels=1, heads={"boundary": 1})
    net = build_network(cfg).train()
    x = torch.randn(2, 1, 8, 16, 16)
    t = _labels(shape=(2, 8, 16, 16))
    boundary = torch.zeros(2, 1, 8, 16, 16)
    boundary[:, :, 4, 8, 8] = 1.0
    loss_fn = build_training_loss("dice_ce", ds_levels=2, head_weights={"boundary": 0.5})
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    values = []
    for _ in range(8):
        opt.zero_grad()
        loss = loss_fn(net(x), t, {"boundary": boundary})
        loss.backward()
        opt.step()
        values.append(float(loss.detach()))
    assert values[-1] < values[0]
    assert set(loss_fn.last_terms) == {"seg0", "seg1", "boundary"}
    with pytest.raises(ValueError, match="extra head 'boundary' but no target"):
        loss_fn(net(x), t)
