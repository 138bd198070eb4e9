"""ktstrain batched augmentation: shapes, label values, identity, determinism, geometry of the transforms."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from ktstrain.augment import AugmentConfig, augment_batch

OFF = AugmentConfig.disabled()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _batch(n=3, shape=(12, 20, 28), seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn((n, 1) + shape, generator=g)
    lab = torch.randint(0, 3, (n,) + shape, generator=g, dtype=torch.int64).to(torch.uint8)
    return img.to(device), lab.to(device)


def _sphere(shape, spacing, r_mm, centre=None):
    c = [(n - 1) / 2 for n in shape] if centre is None else centre
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    d = ((k - c[0]) * spacing[0]) ** 2 + ((j - c[1]) * spacing[1]) ** 2 + ((i - c[2]) * spacing[2]) ** 2
    return d <= r_mm ** 2


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_config_dict_round_trip_and_checks():
    cfg = AugmentConfig(p_elastic=0.3, rotation_other_deg=5.0)
    d = cfg.to_dict()
    assert d["scale_range"] == [0.85, 1.25]
    assert AugmentConfig.from_dict(d) == cfg
    assert AugmentConfig.from_dict(None) == AugmentConfig()
    with pytest.raises(ValueError, match="unknown field"):
        AugmentConfig.from_dict({"p_rotate": 0.1})
    with pytest.raises(ValueError, match="p_noise must be a probability"):
        AugmentConfig(p_noise=1.5)
    with pytest.raises(ValueError, match="scale_range must be a"):
        AugmentConfig(scale_range=(1.2, 0.9))
    assert all(v == 0 for k, v in OFF.to_dict().items() if k.startswith("p_"))


@pytest.mark.parametrize("device", DEVICES)
def test_identity_when_disabled(device):
    img, lab = _batch(device=device)
    out, olab = augment_batch(img, lab, OFF, torch.Generator().manual_seed(1))
    assert torch.equal(out, img) and torch.equal(olab, lab)
    assert out.data_ptr() != img.data_ptr()  # a new tensor, the input is not modified


@pytest.mark.parametrize("device", DEVICES)
def test_everything_on_keeps_shapes_dtypes_and_label_values(device):
    cfg = AugmentConfig(p_rotation=1, rotation_other_deg=10, p_scale=1, p_flip=0.5, p_elastic=1, p_noise=1,
                        p_blur=1, p_brightness=1, p_contrast=1, p_lowres=1, p_gamma=1, p_gamma_invert=0.5)
    img, lab = _batch(n=4, device=device)
    lab = lab * 2  # label values {0, 2, 4}
    before = img.clone()
    out, olab = augment_batch(img, lab, cfg, torch.Generator().manual_seed(0), spacing=(3.0, 1.5, 1.5))
    assert out.shape == img.shape and out.dtype == img.dtype and out.device == img.device
    assert olab.shape == lab.shape and olab.dtype == lab.dtype and olab.device == lab.device
    assert set(torch.unique(olab).tolist()) <= {0, 2, 4}
    assert torch.isfinite(out).all() and not torch.equal(out, img)
    assert torch.equal(img, before)
    # channel-first labels and float64-free images of more channels work too
    img2 = torch.randn(2, 2, 8, 12, 12, device=device)
    lab2 = torch.randint(0, 2, (2, 1, 8, 12, 12), device=device)
    o2, l2 = augment_batch(img2, lab2, cfg, torch.Generator().manual_seed(0))
    assert o2.shape == img2.shape and l2.shape == lab2.shape and l2.dtype == torch.int64
    o3, l3 = augment_batch(img2, None, cfg, torch.Generator().manual_seed(0))
    assert l3 is None and o3.shape == img2.shape


def test_seeded_generator_is_repeatable():
    cfg = AugmentConfig(p_rotation=0.5, p_scale=0.5, p_elastic=0.5, p_noise=0.5, p_blur=0.5, p_lowres=0.5)
    img, lab = _batch(n=6)
    a = augment_batch(img, lab, cfg, torch.Generator().manual_seed(7))
    b = augment_batch(img, lab, cfg, torch.Generator().manual_seed(7))
    c = augment_batch(img, lab, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_flips_apply_to_image_and_label_alike():
    k, j, i = torch.meshgrid(torch.arange(6), torch.arange(8), torch.arange(10), indexing="ij")
    base = (k * 100 + j * 10 + i).float()
    img = base.expand(4, 1, 6, 8, 10).clone()
    lab = (base.long() % 7).expand(4, 6, 8, 10).clone()
    for axis in range(3):
        cfg = replace(OFF, p_flip=1.0, flip_axes=(axis,))
        out, olab = augment_batch(img, lab, cfg, torch.Generator().manual_seed(0))
        assert torch.equal(out, torch.flip(img, [2 + axis]))
        assert torch.equal(olab, torch.flip(lab, [1 + axis]))
    # through the sampling grid (a zero-angle rotation forces it) flips still agree, label exactly
    cfg = replace(OFF, p_flip=1.0, p_rotation=1.0, rotation_axial_deg=0.0)
    out, olab = augment_batch(img, lab, cfg, torch.Generator().manual_seed(0), spacing=(3.0, 1.0, 0.7))
    assert torch.allclose(out, torch.flip(img, [2, 3, 4]), atol=1e-3)
    assert torch.equal(olab, torch.flip(lab, [1, 2, 3]))
    assert torch.equal(olab.long(), out[:, 0].round().long() % 7)


def test_rotation_is_in_millimetres():
    # a centred ball is unchanged by any rotation about the centre, even with anisotropic voxels and patch
    shape, spacing = (10, 40, 64), (3.0, 0.8, 0.8)
    ball = _sphere(shape, spacing, 12.0)
    lab = torch.from_numpy(ball.astype(np.uint8))[None].repeat(4, 1, 1, 1)
    img = lab[:, None].float()
    cfg = replace(OFF, p_rotation=1.0, rotation_axial_deg=40.0, rotation_other_deg=5.0)
    _, olab = augment_batch(img, lab, cfg, torch.Generator().manual_seed(3), spacing=spacing)
    for b in range(4):
        assert _dice(olab[b].numpy() > 0, ball) > 0.95
    # the same rotation in index units would squash the ball
    _, bad = augment_batch(img, lab, cfg, torch.Generator().manual_seed(3), spacing=(1.0, 1.0, 1.0))
    assert min(_dice(bad[b].numpy() > 0, ball) for b in range(4)) < 0.95


def test_scaling_and_padding():
    shape, spacing = (16, 32, 32), (2.0, 1.0, 1.0)
    ball = _sphere(shape, spacing, 8.0)
    lab = torch.from_numpy(ball.astype(np.uint8))[None].repeat(2, 1, 1, 1)
    img = torch.full((2, 1) + shape, 5.0)
    cfg = replace(OFF, p_scale=1.0, scale_range=(1.25, 1.25))
    out, olab = augment_batch(img, lab, cfg, torch.Generator().manual_seed(0), spacing=spacing, pad_value=-3.0)
    ratio = olab[0].sum().item() / lab[0].sum().item()
    assert ratio == pytest.approx(1.25 ** 3, rel=0.1)  # zoom in: the ball grows
    assert torch.allclose(out, torch.full_like(out, 5.0))  # zooming in never reaches outside
    cfg = replace(OFF, p_scale=1.0, scale_range=(0.8, 0.8))
    out, olab = augment_batch(img, lab, cfg, torch.Generator().manual_seed(0), spacing=spacing, pad_value=-3.0)
    assert out.min().item() == pytest.approx(-3.0) and out.max().item() == pytest.approx(5.0)
    assert olab[0].sum().item() / lab[0].sum().item() == pytest.approx(0.8 ** 3, rel=0.1)
    assert olab[:, 0].sum() == 0 and olab[:, -1].sum() == 0  # padded label is 0
    # default pad value: each sample's minimum (air)
    img2 = img.clone()
    img2[:, :, :2] = -7.0
    out2, _ = augment_batch(img2, lab, cfg, torch.Generator().manual_seed(0), spacing=spacing)
    assert out2.min().item() == pytest.approx(-7.0)


def test_intensity_transforms_only_touch_the_image():
    img, lab = _batch(n=4)
    cfg = replace(OFF, p_noise=1, p_blur=1, p_brightness=1, p_contrast=1, p_lowres=1, p_gamma=1)
    out, olab = augment_batch(img, lab, cfg, torch.Generator().manual_seed(2))
    assert torch.equal(olab, lab) and not torch.equal(out, img)
    # brightness alone is a per-sample factor inside its range
    out, _ = augment_batch(img, lab, replace(OFF, p_brightness=1.0), torch.Generator().manual_seed(2))
    f = (out / img).flatten(1)
    assert torch.allclose(f, f[:, :1], atol=1e-4) and ((f[:, 0] >= 0.75) & (f[:, 0] <= 1.25)).all()
    # gamma keeps each sample's mean and spread
    out, _ = augment_batch(img, lab, replace(OFF, p_gamma=1.0, p_gamma_invert=0.5), torch.Generator().manual_seed(4))
    assert torch.allclose(out.mean(dim=(1, 2, 3, 4)), img.mean(dim=(1, 2, 3, 4)), atol=1e-4)
    assert torch.allclose(out.std(dim=(1, 2, 3, 4)), img.std(dim=(1, 2, 3, 4)), atol=1e-3)


def test_probabilities_are_per_sample():
    img, lab = _batch(n=64, shape=(4, 6, 6))
    cfg = replace(OFF, p_brightness=0.5)
    out, _ = augment_batch(img, lab, cfg, torch.Generator().manual_seed(5))
    changed = (out != img).flatten(1).any(1).float().mean().item()
    assert 0.3 < changed < 0.7


def test_bad_shapes_are_refused():
    img, lab = _batch()
    with pytest.raises(ValueError, match=r"image must be \(N, C, k, j, i\)"):
        augment_batch(img[0], lab)
    with pytest.raises(ValueError, match="does not match"):
        augment_batch(img, lab[:, :5])
