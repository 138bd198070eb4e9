"""Report 003's 2.5D U-Net (three 2D U-Nets, one per axis) as one 3D-input network: sizes, views, context, learning."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from KidneyTumorSegLib.engine.triplanar import TriPlanarUNet, triplanar_divisor

from helpers_nets import fit_losses

SMALL = (4, 8, 16)  # divisor 4


@pytest.fixture(scope="module")
def net() -> TriPlanarUNet:
    torch.manual_seed(0)
    return TriPlanarUNet(channels=SMALL)


def _only(net: TriPlanarUNet, axis: int, monkeypatch) -> None:
    """Replace every U-Net's forward except ``unets[axis]`` by one returning zeros."""
    for b, unet in enumerate(net.unets):
        if b != axis:
            monkeypatch.setattr(unet, "forward", lambda t: t.new_zeros((t.shape[0], net.out_channels) + t.shape[2:]))


def _in_plane_pattern(shape, axis: int) -> torch.Tensor:
    """A random ``(1, 1, k, j, i)`` volume, constant along ``axis``, varying in the other two."""
    size = list(shape)
    size[axis] = 1
    return torch.randn(1, 1, *size).expand(1, 1, *shape).contiguous()


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", [(2, 1, 16, 32, 24), (1, 1, 32, 16, 16)])
def test_logits_have_the_patch_size_in_train_and_eval_mode(net, shape, train):
    net.train(train)
    with torch.no_grad():
        out = net(torch.randn(*shape))
    net.eval()
    assert type(out) is torch.Tensor and tuple(out.shape) == (shape[0], 2) + shape[2:]


def test_the_divisor_is_two_to_the_number_of_down_samplings():
    assert triplanar_divisor(SMALL) == 4
    assert triplanar_divisor((16, 32, 64, 128)) == 8
    assert triplanar_divisor([8, 16]) == 2
    assert TriPlanarUNet(channels=(16, 32, 64, 128)).divisor == 8


@pytest.mark.parametrize("size", [(14, 16, 16), (16, 18, 16), (16, 16, 10), (2, 4, 4)])
def test_an_axis_that_is_not_a_multiple_of_the_divisor_is_refused_clearly(net, size):
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.randn(1, 1, *size))


def test_only_one_image_channel_is_accepted(net):
    with pytest.raises(ValueError, match="in_channels=2"):
        TriPlanarUNet(in_channels=2)
    with pytest.raises(ValueError, match="one input channel"):
        net(torch.randn(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, 1, k, j, i\)"):
        net(torch.randn(1, 8, 8, 8))


def test_bad_constructor_arguments_are_refused():
    with pytest.raises(ValueError, match="two levels"):
        TriPlanarUNet(channels=(16,))
    with pytest.raises(ValueError, match="context"):
        TriPlanarUNet(context=-1)


def test_it_holds_three_2d_u_nets_with_2_context_plus_1_input_channels():
    net = TriPlanarUNet(channels=SMALL, context=3)
    assert len(net.unets) == 3
    for unet in net.unets:
        assert unet.spatial_dims == 2 and unet.deep_supervision_levels == 0
        first = [m for m in unet.modules() if isinstance(m, nn.Conv2d)][0]
        assert first.in_channels == 7
    assert not any(isinstance(m, nn.Conv3d) for m in net.modules())


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_each_u_net_labels_slices_along_its_own_axis(net, axis, monkeypatch):
    shape = (8, 12, 16)
    x = _in_plane_pattern(shape, axis)
    _only(net, axis, monkeypatch)
    with torch.no_grad():
        out = net(x)
    first = out.narrow(2 + axis, 0, 1)
    assert torch.allclose(out, first.expand_as(out), atol=1e-5)  # identical slices along its axis
    assert float(out.std()) > 1e-3  # but not a constant volume
    # the other two views, on the same volume, do vary along this axis
    monkeypatch.undo()
    for other in range(3):
        if other != axis:
            _only(net, other, monkeypatch)
            with torch.no_grad():
                o = net(x)
            monkeypatch.undo()
            assert not torch.allclose(o, o.narrow(2 + axis, 0, 1).expand_as(o), atol=1e-3)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_each_view_equals_its_u_net_on_the_slices_in_patch_axis_order(net, axis):
    torch.manual_seed(axis)
    x = torch.randn(2, 1, 8, 12, 16)
    with torch.no_grad():
        view = net.view_logits(x, axis)
        for s in (0, 3, x.shape[2 + axis] - 1):
            idx = [min(max(s + d, 0), x.shape[2 + axis] - 1) for d in range(-net.context, net.context + 1)]
            slab = x[:, 0].index_select(1 + axis, torch.tensor(idx)).movedim(1 + axis, 1)  # (N, 2c+1, P, Q)
            want = net.unets[axis](slab)
            got = view.select(2 + axis, s)
            assert torch.allclose(got, want, atol=1e-5), (axis, s)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_the_slab_for_slice_s_is_slices_s_minus_context_to_s_plus_context_edge_replicated(axis):
    net = TriPlanarUNet(channels=(4, 8), context=2)
    net.max_batch = 5  # several chunks: the context crosses chunk boundaries
    shape = [8, 8, 8]
    shape[axis] = 12
    view = [1, 1, 1]
    view[axis] = 12
    x = torch.arange(12, dtype=torch.float32).reshape(1, 1, *view).expand(1, 1, *shape).contiguous()
    seen = []
    net.unets[axis].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        net(x)
    assert [t.shape[0] for t in seen] == [5, 5, 2]
    slabs = torch.cat(seen)  # (12, 5, P, Q)
    assert tuple(slabs.shape[2:]) == tuple(s for a, s in enumerate(shape) if a != axis)
    for s in range(12):
        for c in range(5):
            want = float(min(max(s - 2 + c, 0), 11))
            assert torch.all(slabs[s, c] == want), (s, c)


def test_chunking_changes_neither_the_logits_nor_the_gradients():
    torch.manual_seed(0)
    net = TriPlanarUNet(channels=(4, 8))
    x = torch.randn(2, 1, 8, 6, 10)
    outs, grads = [], []
    for max_batch in (64, 3):
        net.max_batch = max_batch
        net.zero_grad()
        out = net(x)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)
    for unet in net.unets:
        assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in unet.parameters())


def test_it_learns_a_bright_cube():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 16, 16, 16) * 0.3
    y = torch.zeros(2, 16, 16, 16, dtype=torch.long)
    for n, (k, j, i) in enumerate([(3, 5, 7), (8, 2, 4)]):
        x[n, 0, k:k + 6, j:j + 6, i:i + 6] += 2.0
        y[n, k:k + 6, j:j + 6, i:i + 6] = 1
    net = TriPlanarUNet(channels=(4, 8))
    losses = fit_losses(net, x, y, steps=30)
    assert losses[-1] < 0.5 * losses[0], losses


def test_the_default_network_has_a_fixed_parameter_count():
    net = TriPlanarUNet()
    assert sum(p.numel() for p in net.parameters()) == 1_448_790  # 3 x 482_930


def test_registered_as_architecture_triplanar_3d_only():
    from KidneyTumorSegLib.config import NetworkConfig
    from KidneyTumorSegLib.engine.networks import build_network, required_divisor

    cfg = NetworkConfig(architecture="triplanar", channels=(4, 8, 16), out_channels=3)
    net = build_network(cfg).eval()
    assert isinstance(net, TriPlanarUNet) and required_divisor(cfg) == (4, 4, 4)
    with torch.no_grad():
        assert net(torch.randn(1, 1, 8, 12, 16)).shape == (1, 3, 8, 12, 16)
    with pytest.raises(ValueError, match="architecture 'triplanar' takes 3D patches"):
        build_network(NetworkConfig(architecture="triplanar", spatial_dims=2))
