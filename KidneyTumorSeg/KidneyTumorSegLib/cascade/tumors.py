"""Stage 3, tumor probability on each kidney's crop, grown over tumor that stage 2 left out.

Report 000's stage 3 sees one kidney's crop with everything outside that
kidney set to -1024 HU (see :mod:`.crop`); stage 4 scores the
candidates of each pass (see :mod:`candidates`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from ..config import PostprocessConfig, StageConfig
from ..geometry.boxes import box_slices, expand_box
from ..geometry.records import Crop
from ..geometry.masks import dilate_mm
from ..geometry.volume import Volume
from .candidates import Scored, score_candidates
from .crop import KidneyCrop, kidney_crop
from .predict import Fraction, predict_on_grid

log = logging.getLogger(__name__)

GROWTH_STOP = 0.02  # no growth pass when kept tumor reaches past the region by at most this fraction of its volume


@dataclass(frozen=True)
class KidneyTumors:
    """Stages 3 and 4 on one kidney: the last pass's crop, stage 2's kidney on it, the scored candidates,
    their component map on the crop (value = position in ``scored`` + 1; None without a tumor stage)
    and the number of specks not listed (see :func:`candidates.score_candidates`)."""

    crop: KidneyCrop
    kidney: np.ndarray
    scored: List[Scored]
    components: Optional[np.ndarray]
    specks: int


@dataclass(frozen=True)
class _Pass:
    """What one pass looked at (its crop of the canonical grid and region) and the probabilities it gave."""

    crop: Crop
    prob: np.ndarray
    allowed: np.ndarray


def kidney_only(can: Volume, mask: np.ndarray, offset: Sequence[int], stage: StageConfig) -> KidneyTumors:
    """A model of kidneys only: the kidney as stage 2 found it, no candidates."""
    kc = kidney_crop(can, mask, offset, stage)
    return KidneyTumors(kc, kc.mask, [], None, 0)


def tumor_passes(can: Volume, mask: np.ndarray, offset: Sequence[int], stage: StageConfig, predictor,
                 post: PostprocessConfig, progress: Optional[Fraction] = None) -> KidneyTumors:
    """Stage 3 (and 4's scoring) on one kidney (``mask``, placed at index ``offset`` of ``can``).

    Stage 3 sees the kidney dilated by ``stage.mask_dilation_mm``, so a tumor
    that bulges out of the kidney where stage 2 missed it is cut at that rim.
    When kept candidates reach into the rim (by more than ``GROWTH_STOP`` of
    their volume), the pass is repeated with the region widened to the kept
    candidates dilated by ``post.tumor_growth_mm``, at most
    ``post.tumor_growth_passes`` more times. A growth pass decides only the
    voxels it adds; the earlier passes' probabilities stand where they looked.
    """
    stage2 = Crop.placed(offset, mask.shape, can.shape)
    kidney0 = mask
    passes = post.tumor_growth_passes + 1
    seen: Optional[_Pass] = None
    first: Optional[_Pass] = None
    for p in range(passes):
        kc = kidney_crop(can, mask, offset, stage)
        # the kidney is stage 2's (a growth pass's region is wider), on this crop
        kidney = kc.crop.relative_to(stage2).apply(kidney0, fill=False)
        part = None if progress is None else (lambda f, p=p: progress((p + f) / passes))
        seen = _predict_pass(kc, stage, predictor, seen, part)
        first = first or seen
        # the first pass's region on this crop: kidney contact is measured there
        first_here = first.crop.relative_to(kc.crop).invert(first.allowed, fill=False)
        cc, scored, specks = score_candidates(seen.prob, kc.volume, post, kidney, first_here)
        if p == passes - 1:
            break
        kept = np.zeros(kc.mask.shape, bool)
        for sc in scored:
            if not sc.why:
                kept[sc.sl] |= sc.sub
        grown = kept & ~kc.mask
        if not grown.any() or grown.sum() <= GROWTH_STOP * kept.sum():
            break
        log.debug("tumor growth pass %d: kept candidates reach %.1f mL past the region", p + 1,
                  grown.sum() * kc.volume.voxel_volume_ml())
        mask, offset = _grown_region(kc, kept, stage, post)
    return KidneyTumors(kc, kidney, scored, cc, specks)


def _predict_pass(kc: KidneyCrop, stage: StageConfig, predictor, seen: Optional[_Pass],
                  progress: Optional[Fraction]) -> _Pass:
    """Stage 3's probabilities on ``kc`` (zero outside its region), the earlier pass's standing where it looked."""
    tprob = predict_on_grid(kc.volume, stage, predictor, progress)
    tprob[~kc.allowed] = 0.0
    if seen is not None:
        # where an earlier pass looked, its answer stands (stage 3 saw the context it was trained
        # with there; a wider one can change it): a growth pass only decides the voxels it adds.
        # The region only grows, so this crop holds the earlier one.
        part = tprob[box_slices(seen.crop.relative_to(kc.crop).box)]
        part[seen.allowed] = seen.prob[seen.allowed]
    return _Pass(kc.crop, tprob, kc.allowed)


def _grown_region(kc: KidneyCrop, kept: np.ndarray, stage: StageConfig, post: PostprocessConfig):
    """The next pass's region and where it lies (``(mask, offset)``, as :func:`kidney_crop` takes them).

    This region plus the kept candidates dilated by ``tumor_growth_mm`` (kidney_crop adds
    ``mask_dilation_mm``), on a frame padded so that the dilation is not cut by this crop's box.
    """
    spacing = kc.volume.spacing_zyx
    extra = max(post.tumor_growth_mm - stage.mask_dilation_mm, 0.0)
    pad = [int(np.ceil(extra / s)) + 1 for s in spacing]
    framed = Crop(expand_box(tuple((0, n) for n in kc.mask.shape), pad), kc.mask.shape)  # type: ignore[arg-type]
    frame = dilate_mm(framed.apply(kept, fill=False), extra, spacing)
    frame |= framed.apply(kc.mask, fill=False)
    return frame, kc.crop.inner(framed.box).start
