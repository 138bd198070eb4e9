"""2D and 2.5D stages in training: slabs drawn and augmented as 3D patches, fed to the network as 2D images."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from KidneyTumorSegLib.config import NetworkConfig, StageConfig
from ktstrain.slices import as_slices, training_patch_size

ENET = NetworkConfig(architecture="enet", spatial_dims=2, in_channels=1, out_channels=2)


def _stage(mode="2.5d", context=2, **net):
    network = replace(ENET, **dict({"in_channels": 2 * context + 1 if mode == "2.5d" else 1}, **net))
    return StageConfig("s", "tumor", network=network, input_mode=mode, context_slices=context if mode == "2.5d" else 0,
                       patch_size=(7, 64, 48))


def test_a_slab_becomes_channels_and_its_centre_slice_the_target():
    stage = _stage("2.5d", 2)
    assert training_patch_size(stage) == (5, 64, 48)  # the configuration's depth (7) does not apply
    img = torch.arange(2 * 5 * 4 * 3, dtype=torch.float32).reshape(2, 1, 5, 4, 3)
    lab = torch.arange(2 * 5 * 4 * 3).reshape(2, 5, 4, 3) % 3
    x, y = as_slices(img, lab, stage)
    assert x.shape == (2, 5, 4, 3) and torch.equal(x[:, 1], img[:, 0, 1])  # slice order = inference's stacking
    assert y.shape == (2, 4, 3) and torch.equal(y, lab[:, 2])
    flat = _stage("2d")
    assert training_patch_size(flat) == (1, 64, 48)
    x, y = as_slices(img[:, :, 2:3], lab[:, 2:3], flat)
    assert x.shape == (2, 1, 4, 3) and torch.equal(y, lab[:, 2])
    three_d = replace(StageConfig("k", "kidney"), patch_size=(16, 32, 32))
    assert training_patch_size(three_d) == (16, 32, 32)
    assert as_slices(img, lab, three_d) == (img, lab)


def test_a_network_that_cannot_take_the_slab_is_refused_before_training():
    with pytest.raises(ValueError, match=r"context_slices=2 feeds 5 channel\(s\); set network.in_channels to 5, not 1"):
        training_patch_size(_stage("2.5d", 2, in_channels=1))
    with pytest.raises(ValueError, match="needs a 2D network"):
        training_patch_size(_stage("2d", 0, architecture="resunet", spatial_dims=3))
    with pytest.raises(ValueError, match="a slab of 3 slices for a network that takes 5"):
        as_slices(torch.zeros(1, 1, 3, 4, 4), torch.zeros(1, 3, 4, 4), _stage("2.5d", 2))
