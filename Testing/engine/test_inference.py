"""Inference engine: stitching, TTA, ensembles, normalisation, 2D/2.5D, OOM fallback, devices."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from KidneyTumorSegLib.engine import device as device_mod
from KidneyTumorSegLib.config import NetworkConfig, RuntimeConfig, StageConfig
from KidneyTumorSegLib.engine.device import autocast_dtype, gpu_memory, resolve_device, warn_if_low_memory
from KidneyTumorSegLib.engine.inference import (
    NetworkPredictor,
    choose_transforms,
    count_windows,
    fallback_plan,
    importance_map,
    run_with_fallback,
    sliding_window,
)
from KidneyTumorSegLib.engine.intensity import normalise
from KidneyTumorSegLib.engine.networks import build_network
from KidneyTumorSegLib.engine.tta import TRANSFORMS, tta_transforms
from KidneyTumorSegLib.geometry.volume import InputError


def predict_probabilities(image, stage, models, runtime):
    return NetworkPredictor(stage, models, runtime).predict(image)




CPU = RuntimeConfig(device="cpu")
# Divisor (4, 4, 4): lets tests use small odd-ish patches with callables.
NET3 = NetworkConfig(channels=(4, 8, 16), strides=(1, 2, 2), deep_supervision_levels=1)
NET2 = NetworkConfig(spatial_dims=2, channels=(4, 8, 16), strides=(1, 2, 2), deep_supervision_levels=1)


def _stage(**kw) -> StageConfig:
    base = dict(name="s", role="tumor", network=NET3, patch_size=(16, 24, 20), window=(-1000.0, 1000.0),
                normalization="zscore", norm_mean=0.0, norm_std=100.0, spacing=(1.0, 1.0, 1.0))
    base.update(kw)
    return StageConfig(**base)


def _image(shape=(21, 30, 27), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1200, 1200, shape).astype(np.int16)


def _logit_model(f):
    """A 'network' whose foreground logit is f(x) and background logit 0: foreground prob = sigmoid(f(x))."""
    return lambda x: torch.cat([torch.zeros_like(x[:, :1]), f(x)[:, :1]], dim=1)


# -- sliding window -------------------------------------------------------------------

@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("shape", [(37, 50, 45), (16, 24, 20), (7, 9, 31)])
@pytest.mark.parametrize("batch", [1, 3])
def test_stitching_reproduces_exact_predictors(overlap, shape, batch):
    x = torch.randn((1, 1) + shape, generator=torch.Generator().manual_seed(1))
    y = sliding_window(x, lambda t: t + 1, (16, 24, 20), overlap=overlap, sw_batch_size=batch)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x + 1, rtol=0, atol=1e-5)
    y2 = sliding_window(x, lambda t: torch.cat([t * 2, -t], 1), (16, 24, 20), overlap=overlap, sw_batch_size=batch,
                        mode="constant")
    torch.testing.assert_close(y2, torch.cat([x * 2, -x], 1), rtol=0, atol=1e-5)


def test_identity_predictor_leaves_the_input_untouched():
    # MONAI weights predictor outputs in place; an identity output is a view of the image.
    x = torch.randn(1, 1, 40, 40, 40)
    before = x.clone()
    y = sliding_window(x, lambda t: t, (16, 16, 16), sw_batch_size=1)
    assert torch.equal(x, before)
    torch.testing.assert_close(y, before, rtol=0, atol=1e-5)


def test_two_d_windows_over_a_batch_of_slices():
    x = torch.randn(3, 5, 33, 41)
    y = sliding_window(x, lambda t: t[:, 2:3] * 3, (16, 16), overlap=0.5, sw_batch_size=4)
    torch.testing.assert_close(y, x[:, 2:3] * 3, rtol=0, atol=1e-5)


def test_several_windows_per_call_and_progress_counts_them():
    calls, fractions = [], []
    x = torch.zeros(1, 1, 37, 50, 45)
    sliding_window(x, lambda t: calls.append(t.shape[0]) or t + 1, (16, 24, 20), overlap=0.25, sw_batch_size=4,
                   progress=fractions.append)
    assert sum(calls) == count_windows((37, 50, 45), (16, 24, 20), 0.25) == 3 * 3 * 3
    assert max(calls) == 4
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) == len(calls)


def test_gaussian_weights_have_no_zeros_and_are_cached():
    w = importance_map((16, 24, 20))
    assert w.shape == (16, 24, 20) and float(w.min()) >= 1e-3 and float(w.max()) <= 1.0
    assert float(w[8, 12, 10]) > 0.9 and float(w[0, 0, 0]) < 0.01  # centre weighs more than corners
    assert importance_map((16, 24, 20)) is w


# -- intensity ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "normalization, expected",
    [
        ("zscore", [-22.0, -2.0, 0.0, 18.0]),
        ("minmax", [0.0, 0.5, 0.55, 1.0]),
        ("none", [-1000.0, 0.0, 100.0, 1000.0]),
    ],
)
def test_normalise_clips_then_scales(normalization, expected):
    hu = np.array([-3000, 0, 100, 20000], dtype=np.int32)
    stage = _stage(window=(-1000.0, 1000.0), normalization=normalization, norm_mean=100.0, norm_std=50.0)
    out = normalise(hu, stage)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert hu[0] == -3000  # input untouched


def test_normalise_copies_float32_input_and_rejects_zero_std():
    hu = np.full((2, 2, 2), 50.0, dtype=np.float32)
    out = normalise(hu, _stage())
    assert out is not hu and hu[0, 0, 0] == 50.0 and out[0, 0, 0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="norm_std must be positive"):
        normalise(hu, _stage(norm_std=0.0))


# -- TTA ---------------------------------------------------------------------------

def test_twelve_distinct_invertible_transforms():
    x = torch.randn(2, 3, 5, 6, 6)
    outs = []
    for t in TRANSFORMS:
        y = t.forward(x)
        assert torch.equal(t.inverse(y), x), t.name
        outs.append(y)
    assert len(TRANSFORMS) == 12
    assert all(not torch.equal(a, b) for n, a in enumerate(outs) for b in outs[n + 1:])
    rect = torch.randn(1, 1, 5, 6, 7)  # non-square plane: rotations swap j and i, and come back
    for t in TRANSFORMS:
        assert torch.equal(t.inverse(t.forward(rect)), rect), t.name
    assert [t.name for t in tta_transforms(1)] == ["identity"]


def test_transform_filters():
    assert len(tta_transforms(12, rotations=False)) == 8
    two_d = tta_transforms(12, flip_k=False)
    assert len(two_d) == 6 and not any(t.flips_k for t in two_d)
    x = torch.randn(2, 3, 6, 6)  # 2D windows (N, C, j, i)
    for t in two_d:
        assert torch.equal(t.inverse(t.forward(x)), x)
    assert len(tta_transforms(12, rotations=False, flip_k=False)) == 4
    with pytest.raises(ValueError, match=">= 1"):
        tta_transforms(0)


NET_J4_I1 = NetworkConfig(channels=(4, 8, 16), strides=(1, (1, 2, 1), (1, 2, 1)))  # divisor (1, 4, 1)


@pytest.mark.parametrize(
    "stage_kw, runtime_tta, expected",
    [
        (dict(tta=12), 12, 12),
        (dict(tta=12), 4, 4),
        (dict(tta=1), 12, 1),
        (dict(tta=12, spacing=(3.0, 0.8, 0.7)), 12, 8),  # unequal j/i spacing: no rotations
        (dict(tta=12, patch_size=(16, 24, 20)), 12, 12),  # non-square, but 20 x 24 is still a multiple of (4, 4)
        (dict(tta=12, network=NET_J4_I1, patch_size=(16, 24, 22)), 12, 8),  # 22 rows would not divide by 4
        (dict(tta=12, network=NET2, input_mode="2d", patch_size=(1, 16, 16)), 12, 6),  # 2D: no k flips
    ],
)
def test_choose_transforms(stage_kw, runtime_tta, expected):
    stage_kw.setdefault("patch_size", (16, 16, 16))
    assert len(choose_transforms(_stage(**stage_kw), RuntimeConfig(tta=runtime_tta))) == expected


def test_tta_average_of_an_equivariant_predictor_equals_no_tta():
    blur = _logit_model(lambda x: F.avg_pool3d(x, 3, 1, 1))  # symmetric under flips and axial quarter turns
    image = _image()
    stage = _stage(patch_size=(16, 24, 24), tta=12)
    plain = predict_probabilities(image, stage, [blur], CPU)
    tta = predict_probabilities(image, stage, [blur], RuntimeConfig(device="cpu", tta=12))
    np.testing.assert_allclose(tta, plain, atol=1e-5)
    shifted = _logit_model(lambda x: torch.roll(x, 1, dims=-1))  # not flip-equivariant: TTA must change it
    assert np.abs(predict_probabilities(image, stage, [shifted], RuntimeConfig(device="cpu", tta=12))
                  - predict_probabilities(image, stage, [shifted], CPU)).max() > 0.1


def test_ensemble_of_two_constant_predictors_is_their_mean():
    def const(p):
        logits = torch.log(torch.tensor([1 - p, p]))
        return lambda x: logits.view(1, 2, 1, 1, 1).expand(x.shape[0], 2, *x.shape[2:]).clone()

    probs = predict_probabilities(_image(), _stage(), [const(0.8), const(0.4)], CPU)
    assert probs.shape == (2, 21, 30, 27) and probs.dtype == np.float32
    np.testing.assert_allclose(probs[1], 0.6, atol=1e-6)
    np.testing.assert_allclose(probs[0], 0.4, atol=1e-6)


def test_predictions_are_probabilities_of_the_normalised_image():
    image = _image((9, 13, 11))  # smaller than the patch: padded with air and cropped back
    stage = _stage()
    probs = predict_probabilities(image, stage, [_logit_model(lambda x: x)], CPU)
    expected = 1 / (1 + np.exp(-normalise(image, stage)))
    np.testing.assert_allclose(probs[1], expected, atol=1e-5)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-6)


def test_single_channel_networks_get_a_sigmoid():
    probs = predict_probabilities(_image(), _stage(), [lambda x: x * 0 + 2.0], CPU)
    assert probs.shape == (1, 21, 30, 27)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-2.0)), atol=1e-6)


def test_network_predictor_with_a_real_network():
    net = build_network(NET3).train()
    stage = _stage(patch_size=(16, 16, 16), tta=2)
    fractions = []
    predictor = NetworkPredictor(stage, [net], RuntimeConfig(device="cpu", tta=2))
    assert predictor.device == torch.device("cpu") and not net.training
    probs = predictor.predict(_image((20, 18, 24)), progress=fractions.append)
    assert probs.shape == (2, 20, 18, 24)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_stage_and_network_must_agree():
    with pytest.raises(ValueError, match="patch .* is not a multiple of"):
        NetworkPredictor(_stage(patch_size=(16, 18, 16)), [lambda x: x], CPU)
    with pytest.raises(ValueError, match="feeds 5 channel"):
        NetworkPredictor(_stage(network=NET2, input_mode="2.5d", context_slices=2), [lambda x: x], CPU)
    with pytest.raises(ValueError, match="needs a 2D network"):
        NetworkPredictor(_stage(input_mode="2d"), [lambda x: x], CPU)
    with pytest.raises(ValueError, match="no networks"):
        NetworkPredictor(_stage(), [], CPU)


# -- 2D / 2.5D ----------------------------------------------------------------------

def test_two_and_a_half_d_stacks_edge_replicated_neighbours():
    c = 2
    net = NetworkConfig(spatial_dims=2, in_channels=2 * c + 1, channels=(4, 8, 16), strides=(1, 2, 2))
    stage = _stage(network=net, input_mode="2.5d", context_slices=c, patch_size=(1, 16, 16))
    image = _image((7, 20, 19))
    norm = normalise(image, stage)
    for channel, offset in [(0, -2), (2, 0), (4, 2)]:
        model = _logit_model(lambda x, ch=channel: x[:, ch:ch + 1])
        probs = predict_probabilities(image, stage, [model], CPU)
        source = norm[np.clip(np.arange(7) + offset, 0, 6)]
        np.testing.assert_allclose(probs[1], 1 / (1 + np.exp(-source)), atol=1e-5)


def test_two_d_stage_with_a_real_network_and_tta():
    net_cfg = NetworkConfig(spatial_dims=2, in_channels=3, channels=(4, 8, 16), strides=(1, 2, 2), deep_supervision_levels=1)
    stage = _stage(network=net_cfg, input_mode="2.5d", context_slices=1, patch_size=(1, 16, 16), tta=12)
    net = build_network(net_cfg)
    image = _image((5, 20, 24))
    probs = predict_probabilities(image, stage, [net], RuntimeConfig(device="cpu", tta=12))
    assert probs.shape == (2, 5, 20, 24)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    blur = _logit_model(lambda x: F.avg_pool2d(x[:, 1:2], 3, 1, 1))
    np.testing.assert_allclose(predict_probabilities(image, stage, [blur], RuntimeConfig(device="cpu", tta=12)),
                               predict_probabilities(image, stage, [blur], CPU), atol=1e-5)


# -- OOM fallback -----------------------------------------------------------------------

def test_fallback_plans():
    gpu = fallback_plan(torch.device("cuda", 0), 4)
    assert [(a.compute.type, a.stitch.type, a.sw_batch_size) for a in gpu] == [
        ("cuda", "cuda", 4), ("cuda", "cpu", 4), ("cuda", "cpu", 1), ("cpu", "cpu", 4)]
    assert [(a.compute.type, a.sw_batch_size) for a in fallback_plan(torch.device("cpu"), 2)] == [("cpu", 2), ("cpu", 1)]
    assert len(fallback_plan(torch.device("cpu"), 1)) == 1


def test_run_with_fallback_walks_the_whole_gpu_plan(caplog):
    plan = fallback_plan(torch.device("cuda", 0), 2)
    tried = []

    def run(attempt):
        tried.append(attempt)
        if len(tried) < 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")
        return torch.ones(1)

    with caplog.at_level(logging.WARNING):
        assert torch.equal(run_with_fallback(run, plan), torch.ones(1))
    assert tried == plan
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [f"out of GPU memory running {a.label}" for a in plan[:3]]
    assert "entirely on the CPU" in caplog.records[-1].getMessage()

    def always(attempt):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_with_fallback(always, plan)


def test_predict_recovers_from_out_of_memory(caplog):
    failures = [1]
    seen_batches = []

    def flaky(x):
        seen_batches.append(x.shape[0])
        if failures[0] > 0:
            failures[0] -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")
        return _logit_model(lambda t: t)(x)

    image = _image((20, 40, 40))
    stage = _stage(patch_size=(16, 16, 16))
    with caplog.at_level(logging.WARNING):
        probs = predict_probabilities(image, stage, [flaky], RuntimeConfig(device="cpu", sw_batch_size=3))
    assert seen_batches[0] == 3 and set(seen_batches[1:]) == {1}  # retried one window per pass
    assert "out of GPU memory running on the CPU; retrying on the CPU, one window per pass" in caplog.text
    np.testing.assert_allclose(probs[1], 1 / (1 + np.exp(-normalise(image, stage))), atol=1e-5)


# -- devices -----------------------------------------------------------------------------

def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_a_clear_error(name):
    with pytest.raises(InputError, match=rf"device '{name}' was requested but .*use device 'cpu' or 'auto'"):
        resolve_device(name)


def test_autocast_dtype(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert autocast_dtype(cpu, "auto") is None and autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16 and autocast_dtype(cpu, "fp16") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(gpu, "auto") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(gpu, "auto") is torch.float16 and autocast_dtype(gpu, "fp32") is None
    with pytest.raises(InputError, match="unknown precision 'half'"):
        autocast_dtype(cpu, "half")


def test_gpu_memory_helpers_on_cpu(monkeypatch, caplog):
    assert gpu_memory(torch.device("cpu")) is None
    assert warn_if_low_memory(torch.device("cpu"), 10**15) is False
    monkeypatch.setattr(device_mod, "gpu_memory", lambda d: (2**30, 8 * 2**30))
    with caplog.at_level(logging.WARNING):
        assert warn_if_low_memory(torch.device("cuda", 0), 4 * 2**30, "stage roi") is True
    assert "stage roi may need ~4.0 GiB on cuda:0 but only 1.0 of 8.0 GiB are free" in caplog.text
