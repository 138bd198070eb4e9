"""Report 003's 2.5D tumor U-Net: three 2D U-Nets on slices along the three axes, as one 3D-input network.

From report 003 (sections 2.2, 2.3, 3.2 and 3.3): "the 2.5D U-Net is composed of three 2D U-Net
trained with slices along different axis" (axial, coronal and sagittal), one of the tumor (T)
models of its ensemble, the three 2D predictions averaged; its 2D U-Nets were trained on 2D
crops of 256 x 256 from slices that contain tumor, some with dice loss and some with BCE, Adam
with weight decay 5e-4 and a poly learning-rate schedule.

Report 003 trained the three 2D U-Nets *separately* and averaged their predictions. Here they are
*one* module, trained end to end on the mean of their logits: our bundles hold one network per
weight file, and our training loop and inference engine run one network on a 3D patch. So the
module takes a 3D patch ``(N, 1, k, j, i)`` and returns logits ``(N, out_channels, k, j, i)``, a
plain tensor in training and in eval mode (the output contract of :mod:`.networks` with deep
supervision off). The crops, sampling, losses and schedule of report 003 are the training
configuration's business, not this module's.

Report 003 is silent on the rest; what we chose:

* each 2D U-Net is :class:`.networks.UNet` with ``block="basic"`` (conv-norm-act twice per level,
  the plain U-Net), strides ``(1, 2, 2, ...)``, default ``channels=(16, 32, 64, 128)``, affine
  instance norm and leaky ReLU, no deep supervision, no extra heads;
* the 2D U-Nets see ``2 * context + 1`` slices as channels (``context=2``: five slices), the
  slice to label in the middle, the ``context`` neighbours on each side around it, edge-replicated
  at the patch's borders exactly as the inference engine's axial 2.5D stages do (report 003 does
  not say whether its 2D U-Nets saw neighbouring slices; ``context=0`` gives single slices);
* axis ``a`` of the patch ``(k, j, i)`` is sliced by ``unets[a]``: 0 = k (axial), 1 = j
  (coronal), 2 = i (sagittal); a slice keeps its two in-plane axes in the patch's order;
* the three views are combined by the plain mean of their logits (no learned weights);
* slices go through a 2D U-Net in chunks of at most :attr:`TriPlanarUNet.max_batch` 2D images
  per forward (one chunk holds ``max(1, max_batch // N)`` slices of each of the ``N`` patches).
  With instance norm (per image) the chunking does not change the result; with ``norm="batch"``
  the statistics are per chunk. In training autograd still keeps every chunk's activations
  for the backward pass: the chunking caps one forward's batch and workspace, not the graph.

Sizes: every 2D U-Net needs both in-plane axes to be multiples of ``2 ** (len(channels) - 1)``,
and every patch axis is in-plane for two of the views, so ``k``, ``j`` and ``i`` must all be
multiples of :func:`triplanar_divisor`.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from .networks import UNet

AXES = ("k (axial)", "j (coronal)", "i (sagittal)")


def triplanar_divisor(channels: Sequence[int]) -> int:
    """The factor that every patch axis ``k``, ``j``, ``i`` must be a multiple of: ``2 ** (len(channels) - 1)``."""
    return 2 ** (len(tuple(channels)) - 1)


def slice_stack(volume: torch.Tensor, axis: int, start: int, stop: int, context: int) -> torch.Tensor:
    """Slices ``start .. stop - 1`` of ``volume`` along ``axis`` with their neighbours as channels.

    ``volume`` is ``(N, k, j, i)``; ``axis`` 0, 1 or 2 indexes ``(k, j, i)``. Returns
    ``(N * (stop - start), 2 * context + 1, P, Q)`` (patch-major, then slice), ``P, Q`` the two
    other axes in order; channel ``c`` of slice ``s`` is slice ``s - context + c``, clamped to the
    volume (edge replication).
    """
    v = volume.movedim(1 + axis, 1)  # (N, S, P, Q)
    n, depth = v.shape[0], v.shape[1]
    idx = torch.arange(start - context, stop + context, device=v.device).clamp_(0, depth - 1)
    stack = v[:, idx].unfold(1, 2 * context + 1, 1)  # (N, stop - start, P, Q, 2c + 1)
    stack = stack.permute(0, 1, 4, 2, 3)  # (N, stop - start, 2c + 1, P, Q)
    return stack.reshape((n * (stop - start),) + tuple(stack.shape[2:]))


class TriPlanarUNet(nn.Module):
    """Report 003's 2.5D U-Net: one 2D U-Net per axis of a 3D patch, their logits averaged.

    Input ``(N, 1, k, j, i)`` with ``k``, ``j``, ``i`` multiples of :func:`triplanar_divisor`;
    output ``(N, out_channels, k, j, i)`` logits. See the module docstring for what comes from
    report 003 and what we chose.
    """

    max_batch = 64  # at most this many 2D images per 2D U-Net forward (see the module docstring)

    def __init__(self, in_channels: int = 1, out_channels: int = 2, channels: Sequence[int] = (16, 32, 64, 128),
                 context: int = 2, norm: str = "instance", act: str = "leakyrelu") -> None:
        super().__init__()
        if in_channels != 1:
            raise ValueError(f"TriPlanarUNet takes one image channel (its 2D U-Nets get neighbouring slices "
                             f"as channels), got in_channels={in_channels}")
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise ValueError(f"TriPlanarUNet needs at least two levels, got channels={channels}")
        if int(context) != context or context < 0:
            raise ValueError(f"context must be a non-negative int, got {context!r}")
        self.in_channels, self.out_channels = 1, int(out_channels)
        self.channels, self.context = channels, int(context)
        self.divisor = triplanar_divisor(channels)
        strides = (1,) + (2,) * (len(channels) - 1)
        self.unets = nn.ModuleList([
            UNet(spatial_dims=2, in_channels=2 * self.context + 1, out_channels=self.out_channels,
                 channels=channels, strides=strides, block="basic", norm=norm, act=act,
                 deep_supervision_levels=0)
            for _ in AXES])

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 5:
            raise ValueError(f"TriPlanarUNet expects (N, 1, k, j, i), got a tensor of shape {tuple(x.shape)}")
        if x.shape[1] != 1:
            raise ValueError(f"TriPlanarUNet expects one input channel, got {x.shape[1]} "
                             f"(input of shape {tuple(x.shape)})")
        size = tuple(int(s) for s in x.shape[2:])
        if any(s % self.divisor for s in size):
            raise ValueError(f"TriPlanarUNet with {len(self.channels)} levels needs k, j and i to be multiples of "
                             f"{self.divisor} (each axis is in-plane for two of its 2D U-Nets), got (k, j, i)={size}")

    def view_logits(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        """The logits ``(N, out_channels, k, j, i)`` of ``unets[axis]`` alone, slice by slice along ``axis``."""
        volume = x[:, 0]
        n, depth = volume.shape[0], volume.shape[1 + axis]
        step = max(1, self.max_batch // n)
        chunks: List[torch.Tensor] = []
        for s0 in range(0, depth, step):
            s1 = min(depth, s0 + step)
            out = self.unets[axis](slice_stack(volume, axis, s0, s1, self.context))  # (N * (s1 - s0), C, P, Q)
            chunks.append(out.reshape((n, s1 - s0) + tuple(out.shape[1:])))
        logits = torch.cat(chunks, dim=1) if len(chunks) > 1 else chunks[0]  # (N, S, C, P, Q)
        return logits.movedim(2, 1).movedim(2, 2 + axis)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        total = self.view_logits(x, 0)
        for axis in range(1, len(AXES)):
            total = total + self.view_logits(x, axis)
        return total / len(AXES)

    def extra_repr(self) -> str:
        return f"views={AXES}, context={self.context}, divisor={self.divisor}"

