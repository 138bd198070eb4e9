"""Report 003's landmark heat maps at inference, and the box they give.

Report 003's localisation network regresses five heat maps (the left, top,
right, bottom and centre point of each kidney in each slice) beside its
segmentation. Its mixed box rule compares the width across the body
(left-right, the ``i`` axis) of the segmentation's box with that of the
landmarks' box: about the same, the segmentation's box is kept; otherwise
the landmarks' box is used, since the landmarks hold both kidneys where the
segmentation may miss one. :func:`head_maps` runs a network's extra head on a
whole (coarse) volume in one forward pass; :func:`landmark_box` and
:func:`mixed_box` are the rule.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..config import StageConfig
from ..geometry.boxes import Box, box_from_mask
from .intensity import normalise, normalised_value
from .networks import required_divisor

# "about the same" width: within this fraction of the wider box (report 003 gives no number)
SAME_WIDTH = 0.2
PEAK = 0.5  # a heat map's voxels at least this high (of 1) are landmark points


def _unet(model: nn.Module) -> nn.Module:
    return getattr(model, "net", model)  # a Renormalised member wraps its network


def head_maps(models: Sequence[nn.Module], stage: StageConfig, image_hu: np.ndarray, name: str,
              device: torch.device) -> np.ndarray:
    """The mean over ``models`` of head ``name``'s output ``(C, k, j, i)`` on ``image_hu`` (the stage's grid).

    The image is padded with air up to the network's divisor and run in one forward pass (stage 1's
    coarse volumes are small); each model returns its extra heads in eval mode meanwhile.
    """
    div = required_divisor(stage.network)
    pad = [(0, (-n) % d) for n, d in zip(image_hu.shape, div)]
    x = np.pad(normalise(image_hu, stage), pad, constant_values=normalised_value(stage.window[0], stage))
    acc = None
    with torch.inference_mode():
        for model in models:
            unet = _unet(model)
            if name not in getattr(unet, "head_names", ()):
                raise ValueError(f"stage {stage.name!r}: the network has no {name!r} head")
            unet.eval_heads = True
            try:
                out = model(torch.from_numpy(x)[None, None].to(device))[name][0].float().cpu().numpy()
            finally:
                unet.eval_heads = False
            acc = out if acc is None else acc + out
    assert acc is not None
    k, j, i = image_hu.shape
    return (acc / len(models))[:, :k, :j, :i]


def landmark_box(maps: np.ndarray, peak: float = PEAK) -> Optional[Box]:
    """The box ``(k, j, i)`` around every landmark point (heat at least ``peak``), or None when there is none."""
    points = (maps >= peak).any(axis=0)
    return box_from_mask(points) if points.any() else None


def mixed_box(seg: Optional[Box], landmarks: Optional[Box], same: float = SAME_WIDTH) -> Optional[Box]:
    """Report 003's choice: the segmentation's box when its width along ``i`` is about the landmarks' (or there
    are no landmarks), else the landmarks' box (also when the segmentation found nothing)."""
    if landmarks is None or seg is None:
        return seg if landmarks is None else landmarks
    w_seg, w_lm = seg[2][1] - seg[2][0], landmarks[2][1] - landmarks[2][0]
    return seg if abs(w_seg - w_lm) <= same * max(w_seg, w_lm) else landmarks
