"""Networks: every architecture builds, has the output contract of its mode, and fails clearly."""
from __future__ import annotations

import pytest
import torch

from KidneyTumorSegLib.config import NetworkConfig
from KidneyTumorSegLib.engine.networks import (
    ARCHITECTURES,
    InstanceNormGN,
    PreActResBlock,
    build_network,
    count_parameters,
    required_divisor,
    unpack_outputs,
)




SMALL = dict(channels=(4, 8, 16, 32), strides=(1, 2, 2, 2))


def _cfg(arch: str, dims: int = 3, **kw) -> NetworkConfig:
    base = dict(architecture=arch, spatial_dims=dims)
    if arch != "vnet":
        base.update(SMALL)
    base.update(kw)
    return NetworkConfig(**base)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ENet and the 2.5D V-Net are 2D only, the tri-planar U-Net 3D only (their own tests check the refusals)
@pytest.mark.parametrize("arch, dims", [(a, d) for a in ARCHITECTURES for d in (3, 2)
                                        if (d == 2 and a != "triplanar") or (d == 3 and a not in ("enet", "vnet25d"))])
def test_eval_returns_full_resolution_logits(arch, dims):
    cfg = _cfg(arch, dims, in_channels=1, out_channels=3)
    net = build_network(cfg).eval()
    x = torch.randn(2, 1, *([16] * dims))
    with torch.no_grad():
        y = net(x)
    assert isinstance(y, torch.Tensor)
    assert y.shape == (2, 3) + (16,) * dims


@pytest.mark.parametrize("dims", [3, 2])
@pytest.mark.parametrize("arch", ["resunet", "unet", "preact_resunet"])
def test_training_returns_deep_supervision_list_at_native_scales(arch, dims):
    net = build_network(_cfg(arch, dims, deep_supervision_levels=2)).train()
    x = torch.randn(1, 1, *([16] * dims))
    out = net(x)
    assert isinstance(out, list) and len(out) == 3
    assert [tuple(o.shape[2:]) for o in out] == [(16,) * dims, (8,) * dims, (4,) * dims]
    assert all(o.shape[:2] == (1, 2) for o in out)
    sum(o.mean() for o in out).backward()  # every head is connected to the graph
    assert all(p.grad is not None for p in net.parameters())


def test_deep_supervision_off_gives_a_tensor_in_training():
    net = build_network(_cfg("resunet", deep_supervision=False)).train()
    out = net(torch.randn(1, 1, 16, 16, 16))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 2, 16, 16, 16)


def test_vnet_returns_a_tensor_in_both_modes():
    net = build_network(_cfg("vnet", out_channels=2)).train()
    assert isinstance(net(torch.randn(2, 1, 16, 16, 16)), torch.Tensor)


@pytest.mark.parametrize("arch", ["resunet", "preact_resunet"])
def test_extra_heads_in_training_only(arch):
    net = build_network(_cfg(arch, heads={"boundary": 1, "landmarks": 5}))
    x = torch.randn(1, 1, 16, 32, 16)
    out = net.train()(x)
    assert set(out) == {"seg", "boundary", "landmarks"}
    assert out["boundary"].shape == (1, 1, 16, 32, 16) and out["landmarks"].shape == (1, 5, 16, 32, 16)
    segs, extras = unpack_outputs(out)
    assert [s.shape[2:] for s in segs] == [(16, 32, 16), (8, 16, 8), (4, 8, 4)]
    assert set(extras) == {"boundary", "landmarks"}
    with torch.no_grad():
        y = net.eval()(x)
    assert isinstance(y, torch.Tensor) and y.shape == (1, 2, 16, 32, 16)


def test_two_and_a_half_d_network_takes_context_channels():
    net = build_network(_cfg("resunet", 2, in_channels=5)).eval()
    with torch.no_grad():
        assert net(torch.randn(3, 5, 32, 48)).shape == (3, 2, 32, 48)


def test_anisotropic_strides_and_divisors():
    cfg = _cfg("resunet", strides=(1, (1, 2, 2), 2, (1, 2, 2)))
    assert required_divisor(cfg) == (2, 8, 8)
    net = build_network(cfg).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 6, 32, 16)).shape == (1, 2, 6, 32, 16)
    assert required_divisor(NetworkConfig()) == (16, 16, 16)
    assert required_divisor(NetworkConfig(architecture="vnet", spatial_dims=2)) == (16, 16)


def test_default_parameter_counts_are_pinned():
    # A change here breaks every exported weight file: bump the bundle schema if intended.
    assert count_parameters(build_network(NetworkConfig())) == 5_734_886
    assert count_parameters(build_network(NetworkConfig(channels=(8, 16, 32, 64, 128)))) == 1_434_998


def test_preact_block_is_identity_plus_residual_branch():
    block = PreActResBlock(3, 4, 4, 3, 1, ("instance", {"affine": True}), "relu")
    torch.nn.init.zeros_(block.conv2.conv.weight)
    x = torch.randn(1, 4, 6, 6, 6)
    assert torch.equal(block(x), x)  # identity shortcut, and nothing after the sum
    projected = PreActResBlock(3, 4, 8, 3, 2, ("instance", {"affine": True}), "relu")
    assert projected(x).shape == (1, 8, 3, 3, 3)


@pytest.mark.parametrize("dims", [2, 3])
def test_fast_instance_norm_matches_torch_and_loads_its_weights(dims):
    ref = (torch.nn.InstanceNorm2d if dims == 2 else torch.nn.InstanceNorm3d)(6, affine=True)
    torch.nn.init.normal_(ref.weight)
    torch.nn.init.normal_(ref.bias)
    fast = InstanceNormGN(6)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(3, 6, *([9] * dims)) * 5 + 2
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)
    net = build_network(_cfg("resunet", dims))
    assert not any(isinstance(m, (torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d)) for m in net.modules())


def test_unpack_outputs_accepts_every_form():
    t = torch.zeros(1)
    assert unpack_outputs(t) == ([t], {})
    assert unpack_outputs([t, t]) == ([t, t], {})
    segs, extras = unpack_outputs({"seg": t, "boundary": t})
    assert segs == [t] and list(extras) == ["boundary"]


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(architecture="transformer"), "unknown architecture 'transformer'"),
        (dict(architecture="vnet", heads={"boundary": 1}), "has no extra heads"),
        (dict(architecture="vnet", in_channels=5), "16 % in_channels == 0"),
        (dict(channels=(4, 8), strides=(1, 2, 2)), "same length"),
        (dict(channels=(4, 8, 16), strides=(1, 2, 2), deep_supervision_levels=2), "deep_supervision_levels"),
        (dict(heads={"seg": 1}), "reserved"),
        (dict(norm="layer"), "unknown norm"),
        (dict(spatial_dims=4), "spatial_dims"),
    ],
)
def test_bad_configurations_fail_clearly(kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("%", "%")):
        build_network(NetworkConfig(**kw))
