"""Segmentation networks built from a :class:`~KidneyTumorSegLib.config.NetworkConfig`.

Tensors are ``(N, C, k, j, i)`` for 3D networks and ``(N, C, j, i)`` for 2D
ones (2D/2.5D stages: ``in_channels = 2 * context_slices + 1``).

Output contract (the inference engine relies on the eval half, training code
on the training half; :func:`unpack_outputs` reads both):

* eval mode: the segmentation logits ``(N, out_channels, *spatial)``, always a
  plain tensor, whatever the deep supervision or extra heads;
* training mode, no extra heads: a list ``[full_res, coarser_1, ...]`` of
  logits when deep supervision is on (coarser outputs at their own, native
  resolution: the loss downsamples the target, nnU-Net style), else a tensor;
* training mode with extra heads: a dict ``{"seg": <the above>, name: tensor}``.

Why an own U-Net class rather than MONAI's ``DynUNet``: DynUNet returns deep
supervision as one stacked tensor of logits *interpolated* to full resolution
(memory-hungry, and the coarse heads no longer predict at their own scale),
has no hook for extra heads on the last decoder features, always uses plain
blocks in its decoder (``UnetUpBlock``) and has no pre-activation block. The
class below assembles MONAI's own ``UnetResBlock`` / ``UnetBasicBlock`` /
``UnetOutBlock`` / ``get_conv_layer`` with one small pre-activation block, so
the three U-Net variants of report 004 share one topology, one state-dict
layout and one output contract, and differ only in the block. ``vnet`` is
MONAI's ``VNet`` unchanged (report 000's coarse stage); ``enet`` is report
001's 2D ENet (:mod:`.enet`); ``vnet25d`` report 002's 2.5D tumor V-Net with
multi-scale inputs, SE blocks, attention gates and HDC (:mod:`.vnet25d`);
``triplanar`` report 003's 2.5D U-Net, three 2D U-Nets along the three axes
as one 3D-input network (:mod:`.triplanar`).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetOutBlock, UnetResBlock, get_conv_layer
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from monai.networks.nets import VNet

from ..config import NetworkConfig

logger = logging.getLogger(__name__)

ARCHITECTURES = ("resunet", "unet", "preact_resunet", "vnet", "enet", "vnet25d", "triplanar")
_BLOCKS = {"resunet": "res", "unet": "basic", "preact_resunet": "preact"}
_VNET_DIVISOR = 16  # four stride-2 down transitions
_ENET_DIVISOR = 8  # the initial block and two down-sampling bottlenecks

Output = Union[torch.Tensor, List[torch.Tensor], Dict[str, Any]]


def _norm(name: str) -> Any:
    name = name.lower()
    if name == "instance":
        # Affine instance norm as in nnU-Net / DynUNet; MONAI's bare "instance" has no affine.
        return ("instance", {"affine": True})
    if name == "batch":
        return "batch"
    if name == "group":
        return ("group", {"num_groups": 8})
    raise ValueError(f"unknown norm {name!r} (expected instance, batch or group)")


def _act(name: str) -> Any:
    name = name.lower()
    if name == "leakyrelu":
        return ("leakyrelu", {"negative_slope": 0.01, "inplace": True})
    if name in ("relu", "elu"):
        return (name, {"inplace": True})
    if name in ("prelu", "gelu"):
        return name
    raise ValueError(f"unknown activation {name!r} (expected leakyrelu, relu, elu, prelu or gelu)")


class InstanceNormGN(nn.Module):
    """Affine instance norm computed by ``group_norm`` with one group per channel.

    Same result and the same ``weight`` / ``bias`` parameters (state-dict
    compatible with ``nn.InstanceNorm{2,3}d(affine=True)``), but PyTorch's CPU
    group-norm kernel is ~3x faster than its instance norm (which goes through
    batch norm on a reshaped tensor): about 9% of a default resunet forward.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.eps = int(num_features), float(eps)
        self.weight = nn.Parameter(torch.ones(self.num_features))
        self.bias = nn.Parameter(torch.zeros(self.num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def _use_fast_instance_norm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if (isinstance(child, (nn.InstanceNorm2d, nn.InstanceNorm3d)) and child.affine
                and not child.track_running_stats):
            setattr(module, name, InstanceNormGN(child.num_features, child.eps))
        else:
            _use_fast_instance_norm(child)


class PreActResBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016): norm-act-conv-norm-act-conv + shortcut.

    Same constructor as MONAI's ``UnetResBlock``. No activation after the sum:
    the next block normalises and activates first. A strided or
    channel-changing shortcut is a 1x1 convolution of the *pre-activated*
    input, as in the identity-mappings paper.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: Any, stride: Any,
                 norm_name: Any, act_name: Any, dropout: Any = None) -> None:
        super().__init__()
        self.norm1 = get_norm_layer(name=norm_name, spatial_dims=spatial_dims, channels=in_channels)
        self.act1 = get_act_layer(name=act_name)
        self.conv1 = get_conv_layer(spatial_dims, in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                                    dropout=dropout, act=None, norm=None, conv_only=False)
        self.norm2 = get_norm_layer(name=norm_name, spatial_dims=spatial_dims, channels=out_channels)
        self.act2 = get_act_layer(name=act_name)
        self.conv2 = get_conv_layer(spatial_dims, out_channels, out_channels, kernel_size=kernel_size, stride=1,
                                    dropout=dropout, act=None, norm=None, conv_only=False)
        needs_projection = in_channels != out_channels or not np.all(np.atleast_1d(stride) == 1)
        self.shortcut = (
            get_conv_layer(spatial_dims, in_channels, out_channels, kernel_size=1, stride=stride,
                           act=None, norm=None, conv_only=False)
            if needs_projection else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.norm1(x))
        residual = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv2(self.act2(self.norm2(self.conv1(pre))))
        return out + residual


class UNet(nn.Module):
    """U-Net with one block per level, strided-conv downsampling, transposed-conv upsampling.

    ``block``: ``res`` (MONAI ``UnetResBlock``: conv-norm-act-conv-norm + skip,
    act; report 004), ``basic`` (``UnetBasicBlock``) or ``preact``
    (:class:`PreActResBlock`; then a plain conv stem runs first, so the raw
    CT intensities are never instance-normalised per patch, and every output
    head is norm-act-1x1 conv because pre-activation blocks end un-normalised).
    ``strides[l]`` is the stride into level ``l`` (int or per-axis tuple).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, channels: Sequence[int],
                 strides: Sequence[Any], kernel_size: int = 3, block: str = "res", norm: str = "instance",
                 act: str = "leakyrelu", dropout: float = 0.0, deep_supervision_levels: int = 0,
                 heads: Dict[str, int] = None) -> None:
        super().__init__()
        if len(channels) != len(strides):
            raise ValueError(f"channels {tuple(channels)} and strides {tuple(strides)} must have the same length")
        if len(channels) < 2:
            raise ValueError("a U-Net needs at least two levels")
        n_up = len(channels) - 1
        if not 0 <= deep_supervision_levels < n_up:
            raise ValueError(f"deep_supervision_levels must be in [0, {n_up - 1}] for {len(channels)} levels, "
                             f"got {deep_supervision_levels}")
        heads = dict(heads or {})
        if "seg" in heads:
            raise ValueError("head name 'seg' is reserved for the segmentation output")
        block_cls = {"res": UnetResBlock, "basic": UnetBasicBlock, "preact": PreActResBlock}[block]
        norm_name, act_name = _norm(norm), _act(act)
        drop = dropout if dropout and dropout > 0 else None

        def make(cin: int, cout: int, stride: Any) -> nn.Module:
            return block_cls(spatial_dims, cin, cout, kernel_size=kernel_size, stride=stride,
                             norm_name=norm_name, act_name=act_name, dropout=drop)

        def head(cin: int, cout: int) -> nn.Module:
            conv = UnetOutBlock(spatial_dims, cin, cout)
            if block != "preact":
                return conv
            return nn.Sequential(get_norm_layer(name=norm_name, spatial_dims=spatial_dims, channels=cin),
                                 get_act_layer(name=act_name), conv)

        self.spatial_dims = spatial_dims
        self.eval_heads = False  # eval mode returns the extra heads too ({"seg": ..., head: ...}) while True
        self.deep_supervision_levels = int(deep_supervision_levels)
        self.head_names = tuple(heads)
        first_in = in_channels
        if block == "preact":
            self.stem = get_conv_layer(spatial_dims, in_channels, channels[0], kernel_size=kernel_size,
                                       stride=1, act=None, norm=None, conv_only=True)
            first_in = channels[0]
        else:
            self.stem = nn.Identity()
        self.encoder = nn.ModuleList(
            [make(first_in if lvl == 0 else channels[lvl - 1], channels[lvl], strides[lvl]) for lvl in range(len(channels))]
        )
        # Decoder index d = level d (0 = full resolution) .. n_up - 1.
        self.upsample = nn.ModuleList(
            [get_conv_layer(spatial_dims, channels[d + 1], channels[d], kernel_size=strides[d + 1],
                            stride=strides[d + 1], act=None, norm=None, conv_only=True, is_transposed=True)
             for d in range(n_up)]
        )
        self.decoder = nn.ModuleList([make(2 * channels[d], channels[d], 1) for d in range(n_up)])
        self.seg_heads = nn.ModuleList([head(channels[d], out_channels) for d in range(self.deep_supervision_levels + 1)])
        self.extra_heads = nn.ModuleDict({name: head(channels[0], int(n)) for name, n in heads.items()})
        _use_fast_instance_norm(self)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> Output:
        skips: List[torch.Tensor] = []
        x = self.stem(x)
        for enc in self.encoder:
            x = enc(x)
            skips.append(x)
        x = skips.pop()
        want_coarse = self.training and self.deep_supervision_levels > 0
        coarse: List[torch.Tensor] = []
        for d in range(len(self.decoder) - 1, -1, -1):
            x = self.decoder[d](torch.cat((self.upsample[d](x), skips[d]), dim=1))
            if want_coarse and 1 <= d <= self.deep_supervision_levels:
                coarse.append(self.seg_heads[d](x))
        seg = self.seg_heads[0](x)
        if not self.training:
            return dict({"seg": seg}, **{n: self.extra_heads[n](x) for n in self.head_names}) if self.eval_heads else seg
        seg_out: Union[torch.Tensor, List[torch.Tensor]] = [seg] + coarse[::-1] if want_coarse else seg
        if not self.head_names:
            return seg_out
        out: Dict[str, Any] = {"seg": seg_out}
        for name in self.head_names:
            out[name] = self.extra_heads[name](x)
        return out


def _init_weights(module: nn.Module) -> None:
    # Same initialisation as MONAI DynUNet / nnU-Net (He init for leaky ReLU).
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=0.01)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class Renormalised(nn.Module):
    """An ensemble member trained with other z-score statistics than its stage's.

    The input arrives normalised with the stage's ``(mean, std)``; this member
    was trained on ``(mean_m, std_m)``. ``x * std / std_m + (mean - mean_m) /
    std_m`` is exactly what the member's own normalisation gives for the same
    clipped HU (the air padding included, being a clipped HU as well).
    """

    def __init__(self, net: nn.Module, stage_norm: Tuple[float, float], member_norm: Tuple[float, float]) -> None:
        super().__init__()
        self.net = net
        mean, std = (float(v) for v in stage_norm)
        mean_m, std_m = (float(v) for v in member_norm)
        self.scale = std / std_m
        self.shift = (mean - mean_m) / std_m

    def forward(self, x: torch.Tensor) -> Any:
        return self.net(x * self.scale + self.shift)


def build_network(cfg: NetworkConfig) -> nn.Module:
    """Build the network ``cfg`` describes (weights freshly initialised).

    Input ``(N, in_channels, *spatial)``, spatial ``(k, j, i)`` for
    ``spatial_dims=3`` or ``(j, i)`` for 2; every spatial size must be a
    multiple of :func:`required_divisor`. See the module docstring for outputs.
    """
    if cfg.spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {cfg.spatial_dims}")
    if cfg.architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {cfg.architecture!r} (expected one of {ARCHITECTURES})")
    if cfg.architecture == "vnet":
        return _build_vnet(cfg)
    if cfg.architecture == "enet":
        return _build_enet(cfg)
    if cfg.architecture == "vnet25d":
        return _build_vnet25d(cfg)
    if cfg.architecture == "triplanar":
        return _build_triplanar(cfg)
    strides = [_check_stride(s, cfg.spatial_dims) for s in cfg.strides]
    return UNet(
        spatial_dims=cfg.spatial_dims, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        channels=tuple(int(c) for c in cfg.channels), strides=strides, kernel_size=cfg.kernel_size,
        block=_BLOCKS[cfg.architecture], norm=cfg.norm, act=cfg.act, dropout=cfg.dropout,
        deep_supervision_levels=cfg.deep_supervision_levels if cfg.deep_supervision else 0, heads=cfg.heads,
    )


def _build_vnet(cfg: NetworkConfig) -> nn.Module:
    if cfg.heads:
        raise ValueError(f"architecture 'vnet' has no extra heads; remove heads {sorted(cfg.heads)}")
    if 16 % cfg.in_channels != 0:
        raise ValueError(f"architecture 'vnet' needs 16 % in_channels == 0, got in_channels={cfg.in_channels}")
    if cfg.deep_supervision:
        # MONAI's VNet has no auxiliary outputs; it returns one tensor in both modes.
        logger.debug("vnet: deep supervision requested but not available; ignored")
    p = cfg.dropout if cfg.dropout > 0 else None
    return VNet(spatial_dims=cfg.spatial_dims, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
                act=_act(cfg.act),
                dropout_prob_down=p, dropout_prob_up=(p, p or 0.0), dropout_dim=cfg.spatial_dims)


def _fixed_design(cfg: NetworkConfig, dims: int, what: str) -> None:
    """Refuse what an architecture of fixed design cannot be: other spatial dims (``what`` says why), extra heads."""
    if cfg.spatial_dims != dims:
        raise ValueError(f"architecture {cfg.architecture!r} {what}: spatial_dims must be {dims}, got {cfg.spatial_dims}")
    if cfg.heads:
        raise ValueError(f"architecture {cfg.architecture!r} has no extra heads; remove heads {sorted(cfg.heads)}")


def _build_enet(cfg: NetworkConfig) -> nn.Module:
    from .enet import ENet

    _fixed_design(cfg, 2, "is 2D (report 001)")
    return ENet(cfg.in_channels, cfg.out_channels)


def _build_vnet25d(cfg: NetworkConfig) -> nn.Module:
    from .vnet25d import VNet25D

    _fixed_design(cfg, 2, "is 2D (report 002's 2.5D: neighbouring slices as channels)")
    return VNet25D(cfg.in_channels, cfg.out_channels, channels=tuple(int(c) for c in cfg.channels))


def _build_triplanar(cfg: NetworkConfig) -> nn.Module:
    from .triplanar import TriPlanarUNet

    _fixed_design(cfg, 3, "takes 3D patches (its 2D U-Nets slice them)")
    return TriPlanarUNet(cfg.in_channels, cfg.out_channels, channels=tuple(int(c) for c in cfg.channels),
                         norm=cfg.norm, act=cfg.act)


def _check_stride(stride: Any, spatial_dims: int) -> Any:
    s = tuple(int(v) for v in np.atleast_1d(stride))
    if len(s) not in (1, spatial_dims) or min(s) < 1:
        raise ValueError(f"stride {stride!r} is not a positive int or a {spatial_dims}-tuple")
    return s[0] if len(s) == 1 else s


def required_divisor(cfg: NetworkConfig) -> Tuple[int, ...]:
    """Per-axis factor (``(k, j, i)`` or ``(j, i)``) that input sizes must be multiples of."""
    if cfg.architecture == "vnet":
        return (_VNET_DIVISOR,) * cfg.spatial_dims
    if cfg.architecture == "enet":
        return (_ENET_DIVISOR,) * cfg.spatial_dims
    if cfg.architecture in ("vnet25d", "triplanar"):
        return (2 ** (len(cfg.channels) - 1),) * cfg.spatial_dims
    div = np.ones(cfg.spatial_dims, dtype=np.int64)
    for s in cfg.strides:
        div *= np.broadcast_to(np.atleast_1d(np.asarray(s, dtype=np.int64)), (cfg.spatial_dims,))
    return tuple(int(d) for d in div)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


def unpack_outputs(output: Output) -> Tuple[List[torch.Tensor], Dict[str, torch.Tensor]]:
    """Any network output to ``([seg_full, seg_coarser...], {head: tensor})``.

    Accepts every form :class:`UNet` / ``VNet`` returns in either mode, so
    losses need not branch on the configuration.
    """
    extras: Dict[str, torch.Tensor] = {}
    if isinstance(output, dict):
        extras = {k: v for k, v in output.items() if k != "seg"}
        output = output["seg"]
    if isinstance(output, torch.Tensor):
        return [output], extras
    return list(output), extras
