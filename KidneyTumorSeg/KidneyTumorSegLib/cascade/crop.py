"""Stage 3's input for one kidney, shared by inference and training (which builds its tumor samples with it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..config import StageConfig
from ..geometry.boxes import Box, box_from_mask, expand_box
from ..geometry.records import Crop
from ..geometry.masks import dilate_mm
from ..geometry.volume import Volume


@dataclass(frozen=True)
class KidneyCrop:
    """Stage 3's input for one kidney (canonical full-resolution grid).

    ``crop``: the crop of the canonical image (``box`` is its index box ``(k, j, i)``);
    ``box_in_mask``: the same box relative to the kidney mask's array;
    ``volume``: the crop in HU, outside the dilated kidney set to the stage's
    ``mask_value`` when ``mask_outside``; ``mask``: the kidney on the crop;
    ``allowed``: the dilated kidney, where tumor candidates may lie.
    """

    crop: Crop
    box_in_mask: Box
    volume: Volume
    mask: np.ndarray
    allowed: np.ndarray

    @property
    def box(self) -> Box:
        return self.crop.box


def kidney_crop(can: Volume, mask: np.ndarray, offset: Sequence[int], stage: StageConfig) -> KidneyCrop:
    """Crop ``can`` around the kidney ``mask`` (an array placed at index ``offset`` in ``can``).

    Report 000's stage 3 input: the kidney's box plus ``stage.margin_mm``,
    with everything outside the kidney (dilated by ``stage.mask_dilation_mm``)
    set to ``stage.mask_value`` (-1024 HU). Training builds its tumor-stage
    samples with this same function.
    """
    spacing = can.spacing_zyx
    box_in_mask = expand_box(box_from_mask(mask), [stage.margin_mm / s for s in spacing])
    crop = Crop.placed(offset, mask.shape, can.shape).inner(box_in_mask)
    vol = crop.volume(can, fill=stage.mask_value)
    kmask = Crop(box_in_mask, mask.shape).apply(mask, fill=False)
    allowed = dilate_mm(kmask, stage.mask_dilation_mm, spacing)
    if stage.mask_outside:
        arr = vol.array.copy()
        arr[~allowed] = np.asarray(stage.mask_value).astype(arr.dtype)
        vol = vol.with_array(arr)
    return KidneyCrop(crop, box_in_mask, vol, kmask, allowed)
