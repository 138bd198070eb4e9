"""Report 002's 2.5D V-Net for tumors: sizes, its four mechanisms (section 3.2), that it learns, its size."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from KidneyTumorSegLib.engine.vnet25d import AttentionGate, SEBlock, VNet25D

from helpers_nets import fit_losses


@pytest.fixture(scope="module")
def net() -> VNet25D:
    torch.manual_seed(0)
    return VNet25D(5, 2)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", [(2, 5, 64, 64), (1, 5, 96, 128)])
def test_logits_have_the_input_size_in_train_and_eval_mode(net, shape, train):
    net.train(train)
    with torch.no_grad():
        out = net(torch.randn(*shape))
    net.eval()
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (shape[0], 2) + shape[2:]


@pytest.mark.parametrize("size", [(60, 64), (64, 68), (4, 8)])
def test_a_size_that_is_not_a_multiple_of_8_is_refused_clearly(net, size):
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.randn(1, 5, *size))


def test_it_has_an_se_block_per_down_sampling_and_a_gate_per_skip():
    net = VNet25D(5, 2, channels=(8, 16, 32, 64, 128))
    assert sum(isinstance(m, SEBlock) for m in net.modules()) == 4
    assert [level.se.fc[0].in_features for level in net.down] == [16, 32, 64, 128]
    assert sum(isinstance(m, AttentionGate) for m in net.modules()) == 4
    assert [g.theta.in_channels for g in net.attention_gates] == [64, 32, 16, 8]  # coarse to fine


def test_the_bottom_has_three_hybrid_dilated_3x3_convolutions_of_rates_2_3_5(net):
    bottom = [m for m in net.down[-1].stage.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.dilation, m.kernel_size) for m in bottom] == [((2, 2), (3, 3)), ((3, 3), (3, 3)), ((5, 5), (3, 3))]
    others = [m for name, m in net.named_modules() if isinstance(m, nn.Conv2d) and not name.startswith("down.2.stage")]
    assert all(m.dilation == (1, 1) for m in others)


def test_attention_coefficients_are_in_0_1_one_per_skip_pixel(net):
    with torch.no_grad():
        net(torch.randn(2, 5, 64, 64) * 10)
    sizes = []
    for gate in net.attention_gates:
        alpha = gate.last_coefficients
        assert alpha is not None and float(alpha.min()) >= 0.0 and float(alpha.max()) <= 1.0
        sizes.append(tuple(alpha.shape))
    assert sizes == [(2, 1, 16, 16), (2, 1, 32, 32), (2, 1, 64, 64)]


def test_gate_coefficients_stay_in_0_1_for_extreme_inputs():
    torch.manual_seed(1)
    gate = AttentionGate(8, 16, 4)
    with torch.no_grad():
        alpha = gate.coefficients(torch.randn(2, 8, 16, 16) * 1e3, torch.randn(2, 16, 8, 8) * 1e3)
    assert alpha.shape == (2, 1, 16, 16) and float(alpha.min()) >= 0.0 and float(alpha.max()) <= 1.0


def test_each_multi_scale_branch_sees_the_input_at_its_scale_and_changes_the_output(net):
    x = torch.randn(1, 5, 64, 64)
    seen = []
    hooks = [level.multiscale.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
             for level in net.down]
    with torch.no_grad():
        before = net(x)
    for h in hooks:
        h.remove()
    assert seen == [(1, 5, 32, 32), (1, 5, 16, 16), (1, 5, 8, 8)]
    for level in net.down:
        conv = level.multiscale[0]
        saved = conv.weight.detach().clone()
        with torch.no_grad():
            conv.weight.zero_()
            after = net(x)
            conv.weight.copy_(saved)
        assert not torch.allclose(before, after, atol=1e-4)


def test_it_learns_a_bright_square():
    torch.manual_seed(0)
    x = torch.randn(4, 5, 32, 32) * 0.3
    y = torch.zeros(4, 32, 32, dtype=torch.long)
    for i, (r, c) in enumerate([(4, 6), (14, 18), (20, 3), (9, 22)]):
        x[i, :, r:r + 8, c:c + 8] += 2.0
        y[i, r:r + 8, c:c + 8] = 1
    net = VNet25D(5, 2, channels=(8, 16, 32, 64))
    losses = fit_losses(net, x, y, steps=30)
    assert losses[-1] < 0.5 * losses[0], losses


def test_the_default_network_has_a_fixed_parameter_count():
    net = VNet25D(5, 2)
    assert sum(p.numel() for p in net.parameters()) == 2_394_669


def test_bad_constructor_arguments_are_refused():
    with pytest.raises(ValueError, match="two levels"):
        VNet25D(5, 2, channels=(16,))
    with pytest.raises(ValueError, match="dilations"):
        VNet25D(5, 2, dilations=())
    with pytest.raises(ValueError, match="se_reduction"):
        VNet25D(5, 2, se_reduction=0)


def test_registered_as_architecture_vnet25d_2d_only():
    from KidneyTumorSegLib.config import NetworkConfig
    from KidneyTumorSegLib.engine.networks import build_network, required_divisor

    cfg = NetworkConfig(architecture="vnet25d", spatial_dims=2, in_channels=5, out_channels=2,
                        channels=(8, 16, 32, 64))
    net = build_network(cfg).eval()
    assert isinstance(net, VNet25D)
    assert required_divisor(cfg) == (8, 8)
    with torch.no_grad():
        assert net(torch.randn(1, 5, 32, 40)).shape == (1, 2, 32, 40)
    with pytest.raises(ValueError, match="architecture 'vnet25d' is 2D"):
        build_network(NetworkConfig(architecture="vnet25d", spatial_dims=3, in_channels=5))
