"""Exact stage predictors built from reference labels.

They check the cascade's logic independently of learning: a
``ReferencePredictor`` answers each stage with the reference label resampled
(linearly, in world coordinates) onto whatever grid the stage asks about. If
the cascade loses track of geometry anywhere (crop offsets, resampling,
reorientation, masking), its output stops matching the reference.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..geometry.volume import Volume


@dataclass
class FalseCandidate:
    """A sphere (LPS mm centre, radius mm) the tumor oracle reports with probability ``p``."""

    centre_lps_mm: Tuple[float, float, float]
    radius_mm: float
    probability: float


@dataclass
class ReferencePredictor:
    """Probabilities ``(2, k, j, i)`` of ``labels`` (KiTS values) on the asked grid.

    ``probability`` is what the oracle reports inside the structure (the
    mean probability stage 4 sees for a true tumor); ``extra`` adds false
    tumor candidates with their own probabilities for testing stage 4.
    """

    reference: Volume
    labels: Sequence[int]
    probability: float = 1.0
    extra: List[FalseCandidate] = field(default_factory=list)

    def __post_init__(self) -> None:
        # uint8 keeps a 512x512x1000 reference at 260 MB; Resample interpolates it into float32
        mask = np.isin(self.reference.array, list(self.labels)).astype(np.uint8)
        self._ref = _to_sitk(self.reference.with_array(mask))

    def predict(self, vol: Volume, progress=None) -> np.ndarray:
        grid = _to_sitk(vol.with_array(np.zeros(vol.shape, np.uint8)))
        res = sitk.Resample(self._ref, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        fg = sitk.GetArrayFromImage(res) * np.float32(self.probability)
        for fc in self.extra:
            k, j, i = np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij")
            world = vol.index_to_world(np.stack([i, j, k], -1))
            inside = np.linalg.norm(world - np.asarray(fc.centre_lps_mm), axis=-1) <= fc.radius_mm
            fg = np.where(inside, np.float32(fc.probability), fg)
        fg = np.clip(fg, 0.0, 1.0).astype(np.float32)
        return np.stack([1.0 - fg, fg])


def reference_predictors(reference: Volume, tumor_probability: float = 0.95, extra: Sequence[FalseCandidate] = ()):
    """Predictors for the three roles from one KiTS label map (1 kidney, 2 tumor)."""
    fg = ReferencePredictor(reference, labels=(1, 2))
    return {
        "roi": fg,
        "kidney": fg,
        "tumor": ReferencePredictor(reference, labels=(2,), probability=tumor_probability, extra=list(extra)),
    }


def _to_sitk(vol: Volume) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(vol.array))
    img.SetSpacing(vol.spacing)
    img.SetOrigin(vol.origin)
    img.SetDirection(vol.direction)
    return img
