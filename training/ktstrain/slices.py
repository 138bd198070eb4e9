"""2D and 2.5D stages in training: slabs of slices drawn and augmented as 3D patches, fed as 2D images.

A 2D stage (report 001's ENet) sees one axial slice; a 2.5D stage (report
002's V-Net) sees the slice with ``context_slices`` neighbours on each side
as channels, as :meth:`~KidneyTumorSegLib.engine.inference.NetworkPredictor.predict`
feeds it. Training draws a patch of ``2 * context_slices + 1`` slices with
the stage's in-plane size (the sampler, the cache and the augmentation stay
the 3D ones; the slab's first axis is what ``patch_size[0]`` would be), and
:func:`as_slices` turns the augmented batch into the network's input (the
slab's slices as channels) and target (the centre slice's labels).
"""
from __future__ import annotations

from typing import Tuple

import torch

from KidneyTumorSegLib.config import StageConfig


def context(stage: StageConfig) -> int:
    """Neighbouring slices on each side of the centre slice that the stage's network sees."""
    return int(stage.context_slices) if stage.input_mode == "2.5d" else 0


def check_slice_stage(stage: StageConfig) -> None:
    """Refuse a 2D/2.5D stage whose network cannot take its input before any training starts."""
    if stage.input_mode == "3d":
        return
    net, c = stage.network, context(stage)
    if net.spatial_dims != 2:
        raise ValueError(f"stage {stage.name!r}: input_mode {stage.input_mode!r} needs a 2D network "
                         f"(network.spatial_dims 2), got spatial_dims={net.spatial_dims}")
    if stage.input_mode == "2d" and stage.context_slices:
        raise ValueError(f"stage {stage.name!r}: input_mode '2d' takes no context_slices (use '2.5d')")
    if net.in_channels != 2 * c + 1:
        raise ValueError(f"stage {stage.name!r}: input_mode {stage.input_mode!r} with context_slices={c} feeds "
                         f"{2 * c + 1} channel(s); set network.in_channels to {2 * c + 1}, not {net.in_channels}")


def training_patch_size(stage: StageConfig) -> Tuple[int, int, int]:
    """The 3D patch the sampler draws for ``stage``: its own for 3D, a slab of ``2c + 1`` slices for 2D/2.5D."""
    check_slice_stage(stage)
    size = tuple(int(p) for p in stage.patch_size)
    if stage.input_mode == "3d":
        return size  # type: ignore[return-value]
    return (2 * context(stage) + 1, size[1], size[2])


def as_slices(image: torch.Tensor, label: torch.Tensor, stage: StageConfig) -> Tuple[torch.Tensor, torch.Tensor]:
    """An augmented batch ``(N, 1, s, j, i)`` / ``(N, s, j, i)`` as the stage's network takes it.

    3D stages: unchanged. 2D/2.5D: the image ``(N, s, j, i)`` (the slab's
    slices as channels, in the order inference stacks them) and the centre
    slice's label ``(N, j, i)``.
    """
    if stage.input_mode == "3d":
        return image, label
    depth = image.shape[2]
    if depth != 2 * context(stage) + 1:
        raise ValueError(f"stage {stage.name!r}: a slab of {depth} slices for a network that takes "
                         f"{2 * context(stage) + 1}")
    return image[:, 0].contiguous(), label[:, depth // 2].contiguous()
