"""ENet (Paszke et al. 2016), the 2D network of report 001's two-stage kidney and tumor segmentation.

Report 001 (its Fig. 3 and 4) uses ENet as published: an initial block (a strided 3x3 convolution
beside a 2x2 max pooling, concatenated to 16 maps at half resolution), then bottleneck modules
(1x1 projection to a quarter of the channels, a regular, dilated or asymmetric 5x1 + 1x5
convolution, 1x1 expansion, spatial dropout, added to the main branch). Stage 1 down-samples to
64 channels and has four more bottlenecks; stages 2 and 3 hold regular, dilated (2, 4, 8, 16)
and asymmetric bottlenecks at 128 channels (stage 2 starts by down-sampling); stages 4 and 5
up-sample with the max-pooling indices of the encoder back to 64 and 16 channels; a transposed
convolution gives ``out_channels`` maps at the input's resolution. Input ``(N, C, H, W)`` with
``H`` and ``W`` multiples of 8; output ``(N, out_channels, H, W)`` logits.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

# (kind, dilation or the asymmetric kernel size) of bottlenecks x.1 .. x.8 of stages 2 and 3 (ENet's Table 1)
_STAGE_2_3 = (("regular", 1), ("dilated", 2), ("asymmetric", 5), ("dilated", 4),
              ("regular", 1), ("dilated", 8), ("asymmetric", 5), ("dilated", 16))


class InitialBlock(nn.Module):
    """A 3x3 convolution with stride 2 (``out - in`` maps) beside a 2x2 max pooling of the input, concatenated."""

    def __init__(self, in_channels: int, out_channels: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


def _conv(kind: str, channels: int, dilation: int) -> nn.Sequential:
    """The bottleneck's middle convolution: regular or dilated 3x3, or a 5x5 as 5x1 then 1x5."""
    if kind == "asymmetric":
        return nn.Sequential(nn.Conv2d(channels, channels, (dilation, 1), padding=(dilation // 2, 0), bias=False),
                             nn.Conv2d(channels, channels, (1, dilation), padding=(0, dilation // 2), bias=False))
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False))


class Bottleneck(nn.Module):
    """A regular, dilated or asymmetric bottleneck (same channels, same size), or a down-sampling one.

    Down-sampling: the main branch max-pools (keeping the indices for the decoder) and pads its
    channels with zeros; the extension's projection is a 2x2 convolution with stride 2.
    """

    def __init__(self, in_channels: int, out_channels: int, kind: str = "regular", dilation: int = 1,
                 downsample: bool = False, dropout: float = 0.1) -> None:
        super().__init__()
        inner = out_channels // 4
        self.downsample, self.pad = downsample, out_channels - in_channels
        self.pool = nn.MaxPool2d(2, return_indices=True) if downsample else None
        project = nn.Conv2d(in_channels, inner, 2 if downsample else 1, stride=2 if downsample else 1, bias=False)
        self.ext = nn.Sequential(
            project, nn.BatchNorm2d(inner), nn.PReLU(inner),
            *_conv(kind, inner, dilation), nn.BatchNorm2d(inner), nn.PReLU(inner),
            nn.Conv2d(inner, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.Dropout2d(dropout))
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        main, indices = x, None
        if self.pool is not None:
            main, indices = self.pool(x)
        if self.pad:
            n, _, h, w = main.shape
            main = torch.cat([main, main.new_zeros(n, self.pad, h, w)], dim=1)
        return self.act(main + self.ext(x)), indices


class UpsamplingBottleneck(nn.Module):
    """Doubles the size: the main branch max-unpools with the encoder's indices, the extension transposes."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.1) -> None:
        super().__init__()
        inner = in_channels // 4
        self.main = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.unpool = nn.MaxUnpool2d(2)
        self.ext = nn.Sequential(
            nn.Conv2d(in_channels, inner, 1, bias=False), nn.BatchNorm2d(inner), nn.PReLU(inner),
            nn.ConvTranspose2d(inner, inner, 2, stride=2, bias=False), nn.BatchNorm2d(inner), nn.PReLU(inner),
            nn.Conv2d(inner, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.Dropout2d(dropout))
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return self.act(self.unpool(self.main(x), indices) + self.ext(x))


class ENet(nn.Module):
    """ENet for ``in_channels`` slices in, ``out_channels`` logits out (see the module docstring)."""

    def __init__(self, in_channels: int = 1, out_channels: int = 2) -> None:
        super().__init__()
        self.initial = InitialBlock(in_channels, 16)
        self.down1 = Bottleneck(16, 64, downsample=True, dropout=0.01)
        self.stage1 = nn.ModuleList([Bottleneck(64, 64, dropout=0.01) for _ in range(4)])
        self.down2 = Bottleneck(64, 128, downsample=True)
        self.stage2 = nn.ModuleList([Bottleneck(128, 128, k, d) for k, d in _STAGE_2_3])
        self.stage3 = nn.ModuleList([Bottleneck(128, 128, k, d) for k, d in _STAGE_2_3])
        self.up4 = UpsamplingBottleneck(128, 64)
        self.stage4 = nn.ModuleList([Bottleneck(64, 64) for _ in range(2)])
        self.up5 = UpsamplingBottleneck(64, 16)
        self.stage5 = nn.ModuleList([Bottleneck(16, 16)])
        self.full_conv = nn.ConvTranspose2d(16, out_channels, 2, stride=2)

    @staticmethod
    def _run(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            x = block(x)[0]
        return x

    def stages(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The output of every stage (initial, 1, 2, 3, 4, 5, full convolution), for checking sizes."""
        outs = [self.initial(x)]
        x, idx1 = self.down1(outs[-1])
        outs.append(self._run(self.stage1, x))
        x, idx2 = self.down2(outs[-1])
        outs.append(self._run(self.stage2, x))
        outs.append(self._run(self.stage3, outs[-1]))
        outs.append(self._run(self.stage4, self.up4(outs[-1], idx2)))
        outs.append(self._run(self.stage5, self.up5(outs[-1], idx1)))
        outs.append(self.full_conv(outs[-1]))
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)[-1]
