"""Report 001's ENet: the sizes of its Fig. 3, ENet's published size, and what build_network accepts."""
from __future__ import annotations

import pytest
import torch

from KidneyTumorSegLib.config import NetworkConfig
from KidneyTumorSegLib.engine.enet import ENet
from KidneyTumorSegLib.engine.networks import build_network, count_parameters, required_divisor

from helpers_nets import fit_losses


def test_every_stage_has_the_size_report_001_gives_for_a_512_by_512_slice():
    net = ENet(1, 3).eval()
    with torch.no_grad():
        outs = net.stages(torch.randn(1, 1, 512, 512))
    # initial, stage 1, 2, 3 (encoder), 4, 5 (decoder), full convolution: report 001's Fig. 3 (ENet's Table 1)
    assert [tuple(o.shape[1:]) for o in outs] == [
        (16, 256, 256), (64, 128, 128), (128, 64, 64), (128, 64, 64), (64, 128, 128), (16, 256, 256), (3, 512, 512)]


def test_it_has_enets_published_size_of_0_37_million_parameters():
    assert count_parameters(ENet(1, 2)) == 369_505  # Paszke et al. 2016: 0.37M


def test_build_network_makes_a_2d_enet_that_learns():
    cfg = NetworkConfig(architecture="enet", spatial_dims=2, in_channels=1, out_channels=3)
    net = build_network(cfg)
    assert isinstance(net, ENet) and required_divisor(cfg) == (8, 8)
    torch.manual_seed(0)
    x, y = torch.randn(2, 1, 64, 64), torch.randint(0, 3, (2, 64, 64))
    losses = fit_losses(net, x, y, steps=5)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("kwargs, message", [
    ({"spatial_dims": 3}, "architecture 'enet' is 2D (report 001): spatial_dims must be 2, got 3"),
    ({"spatial_dims": 2, "heads": {"boundary": 1}}, "architecture 'enet' has no extra heads; remove heads ['boundary']"),
])
def test_what_enet_cannot_be_is_refused_in_one_line(kwargs, message):
    with pytest.raises(ValueError) as e:
        build_network(NetworkConfig(architecture="enet", **kwargs))
    assert str(e.value) == message
