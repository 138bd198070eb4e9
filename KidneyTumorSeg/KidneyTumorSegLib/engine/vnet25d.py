"""Report 002's tumor network: a 2.5D V-Net with multi-scale inputs, SE blocks, attention gates and HDC.

From report 002 (section 3.2): a 2.5D V-Net (neighbouring slices are the input channels of a 2D
network); *multi-scale learning*: every down-sampling of the encoder gets an extra branch that
takes the original input down-sampled to that level's size; a *squeeze-and-excitation* block
(Hu et al. 2018) in the down-sampling of each level; an *attention gate* (Attention U-Net, Oktay
et al. 2018) on every skip connection; three *hybrid dilated convolutions* (HDC, Wang et al.
2018) with dilation rates 2, 3, 5 at the bottom of the encoder.

Report 002 is silent on the rest; what we chose (V-Net = Milletari et al. 2016):

* 5x5 convolutions in the residual stages, as V-Net's 5x5x5 (2D keeps them cheap; the HDC
  layers are 3x3, as in the HDC paper, because their dilations already widen the field);
* V-Net's stage depths: encoder level ``l`` has ``min(l + 1, 3)`` convolutions (1, 2, 3, ...),
  the decoder mirrors them; the bottom stage's convolutions *are* the HDC layers;
* each stage is ``PReLU(convs(x) + x)`` with conv-norm-PReLU convolutions (V-Net's residual
  stage); level 0 adds a 1x1 projection of the input, because V-Net's channel-repeat shortcut
  needs ``channels[0] % in_channels == 0`` (false for 5 slices and 16 channels);
* affine ``InstanceNorm2d`` (safe at batch 1 in inference, unlike batch norm); convolutions
  followed by a norm have no bias; per-channel PReLU (V-Net); no dropout;
* down-sampling: 2x2 convolution with stride 2 (+ norm, PReLU); up-sampling: 2x2 transposed
  convolution to ``channels[l]``, concatenated with the gated skip, so decoder level ``l`` works
  on ``2 * channels[l]`` maps (V-Net's up-transition widths);
* multi-scale branch of level ``l >= 1``: the input average-pooled by ``2 ** l``, a 3x3
  convolution to ``channels[l]`` (+ norm, PReLU), *added* to the down-sampled features;
  the SE block then rescales the sum, before the level's residual stage;
* SE: global average pool, FC to ``channels // se_reduction`` (at least 1), ReLU, FC, sigmoid;
* attention gate: Oktay's additive gate with the coarser decoder features as the gating signal:
  1x1 convolutions of skip and gate to ``channels[l] // 2`` maps (the gate's projection
  bilinearly up-sampled to the skip's size, so the coefficients are computed at the skip's
  resolution rather than up-sampled from the coarse one), ReLU, 1x1 convolution to 1 map,
  sigmoid; the skip is multiplied by the coefficients (no output 1x1 + norm after it);
* no deep supervision, no extra heads: a final 1x1 convolution gives the logits;
* convolutions (also transposed) are initialised with ``kaiming_normal_(a=0.25)`` (PReLU's
  initial slope), biases with zero; the SE's linear layers keep PyTorch's default.

Input ``(N, in_channels, H, W)`` with ``H`` and ``W`` multiples of ``2 ** (len(channels) - 1)``;
output ``(N, out_channels, H, W)`` logits, in training and in eval mode (the output contract of
:mod:`.networks`, with deep supervision off).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

_PRELU_INIT = 0.25  # nn.PReLU's initial slope, the ``a`` of the kaiming initialisation


def _conv_norm_act(cin: int, cout: int, kernel_size: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """Convolution ('same' padding unless strided), affine instance norm, per-channel PReLU."""
    padding = 0 if stride > 1 else dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=False),
        nn.InstanceNorm2d(cout, affine=True), nn.PReLU(cout))


def _n_convs(level: int) -> int:
    """V-Net's stage depths: 1, 2, 3, 3, ... convolutions from the top level down."""
    return min(level + 1, 3)


class ResidualStage(nn.Module):
    """V-Net's residual stage: ``PReLU(convs(x) + x)``; one conv-norm-PReLU per dilation."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs = nn.Sequential(*[_conv_norm_act(channels, channels, kernel_size, dilation=d) for d in dilations])
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.convs(x) + x)


class InputStage(nn.Module):
    """Level 0: a 5x5 conv-norm and a 1x1 projection of the input, summed, PReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.InstanceNorm2d(out_channels, affine=True))
        self.project = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x) + self.project(x))


class SEBlock(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): channels rescaled by a gate from their global means."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.fc(x.mean(dim=(2, 3)))
        return x * weights[:, :, None, None]


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018) on a skip, gated by the coarser decoder features.

    ``last_coefficients`` holds the (detached) coefficients ``(N, 1, H, W)`` of the last forward.
    """

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.theta = nn.Conv2d(skip_channels, inter_channels, 1, bias=False)
        self.phi = nn.Conv2d(gate_channels, inter_channels, 1)
        self.psi = nn.Conv2d(inter_channels, 1, 1)
        self.last_coefficients: Optional[torch.Tensor] = None

    def coefficients(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """The attention coefficients in [0, 1], one per pixel of ``skip``."""
        g = F.interpolate(self.phi(gate), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(self.psi(F.relu(self.theta(skip) + g)))

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        alpha = self.coefficients(skip, gate)
        self.last_coefficients = alpha.detach()
        return skip * alpha


class DownLevel(nn.Module):
    """Encoder level ``l >= 1``: strided down-sampling + multi-scale input branch, SE, residual stage."""

    def __init__(self, level: int, in_channels: int, prev_channels: int, channels: int, kernel_size: int,
                 se_reduction: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.scale = 2 ** level
        self.down = _conv_norm_act(prev_channels, channels, 2, stride=2)
        self.multiscale = _conv_norm_act(in_channels, channels, 3)
        self.se = SEBlock(channels, se_reduction)
        self.stage = ResidualStage(channels, kernel_size, dilations)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        branch = self.multiscale(F.avg_pool2d(image, self.scale))
        return self.stage(self.se(self.down(x) + branch))


class UpLevel(nn.Module):
    """Decoder level: transposed-conv up-sampling, attention-gated skip, concatenation, residual stage."""

    def __init__(self, in_channels: int, skip_channels: int, n_convs: int, kernel_size: int) -> None:
        super().__init__()
        self.up = nn.Sequential(
            nn.ConvTranspose2d(in_channels, skip_channels, 2, stride=2, bias=False),
            nn.InstanceNorm2d(skip_channels, affine=True), nn.PReLU(skip_channels))
        self.gate = AttentionGate(skip_channels, in_channels, max(1, skip_channels // 2))
        self.stage = ResidualStage(2 * skip_channels, kernel_size, (1,) * n_convs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.stage(torch.cat([self.up(x), self.gate(skip, x)], dim=1))


class VNet25D(nn.Module):
    """Report 002's 2.5D V-Net for tumors (see the module docstring for the architecture)."""

    kernel_size = 5

    def __init__(self, in_channels: int, out_channels: int, channels: Sequence[int] = (16, 32, 64, 128),
                 dilations: Sequence[int] = (2, 3, 5), se_reduction: int = 4) -> None:
        super().__init__()
        channels, dilations = tuple(int(c) for c in channels), tuple(int(d) for d in dilations)
        if len(channels) < 2:
            raise ValueError(f"VNet25D needs at least two levels, got channels={channels}")
        if not dilations or min(dilations) < 1:
            raise ValueError(f"dilations must be a non-empty sequence of positive ints, got {dilations}")
        if se_reduction < 1:
            raise ValueError(f"se_reduction must be >= 1, got {se_reduction}")
        k, deepest = self.kernel_size, len(channels) - 1
        self.channels, self.dilations = channels, dilations
        self.divisor = 2 ** deepest
        self.input_stage = InputStage(in_channels, channels[0], k)
        self.down = nn.ModuleList([
            DownLevel(lvl, in_channels, channels[lvl - 1], channels[lvl],
                      3 if lvl == deepest else k, se_reduction,
                      dilations if lvl == deepest else (1,) * _n_convs(lvl))
            for lvl in range(1, deepest + 1)])
        # self.up[i] decodes level deepest - 1 - i (coarse to fine)
        self.up = nn.ModuleList([
            UpLevel(channels[lvl + 1] if lvl == deepest - 1 else 2 * channels[lvl + 1], channels[lvl],
                    _n_convs(lvl), k)
            for lvl in reversed(range(deepest))])
        self.head = nn.Conv2d(2 * channels[0], out_channels, 1)
        self._initialise()

    def _initialise(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, a=_PRELU_INIT)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def attention_gates(self) -> List[AttentionGate]:
        """The gates of the skips, coarse to fine (one per skip, ``len(channels) - 1``)."""
        return [level.gate for level in self.up]

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"VNet25D expects (N, C, H, W), got a tensor of shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.divisor or w % self.divisor:
            raise ValueError(f"VNet25D with {len(self.channels)} levels needs H and W to be multiples of "
                             f"{self.divisor}, got H={h}, W={w}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        skips = [self.input_stage(x)]
        for level in self.down:
            skips.append(level(skips[-1], x))
        out = skips.pop()
        for level in self.up:
            out = level(out, skips.pop())
        return self.head(out)
