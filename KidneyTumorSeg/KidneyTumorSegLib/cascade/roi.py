"""Stage 1, the region of interest: where the kidneys are, as a box on the canonical grid.

Report 000 localises the kidneys with a coarse network at about 3.4 mm and
keeps the box around its largest components plus a margin. A box the user
gives (LPS mm) replaces the stage; a model without the stage uses the whole scan.
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Tuple

import numpy as np

from ..config import StageConfig
from ..geometry.boxes import Box, box_from_mask, expand_box
from ..geometry.records import Crop
from ..geometry.masks import largest_components
from ..geometry.volume import InputError, RoiWorld, Volume
from .predict import Fraction, predict_volume, stage_record

NOT_FOUND = "no kidney found: the localisation stage found no kidney-like tissue"


def locate(can: Volume, stages: Mapping[str, StageConfig], predictors: Mapping[str, object], roi: Optional[RoiWorld],
           progress: Optional[Fraction] = None) -> Tuple[Optional[Box], List[str]]:
    """The region of interest on ``can`` (None: no kidney-like tissue) and a message when the user gave it."""
    if roi is not None:
        return world_box_to_index(can, roi), ["region of interest given by the user; stage 1 skipped"]
    if "roi" in stages:
        return stage_roi(can, stages["roi"], predictors["roi"], progress)
    return tuple((0, n) for n in can.shape), []  # type: ignore[return-value]


def stage_roi(can: Volume, stage: StageConfig, predictor,
              progress: Optional[Fraction] = None) -> Tuple[Optional[Box], List[str]]:
    """Stage 1 on the canonical volume: the box around the stage's largest components plus its margin (or,
    with ``box_rule`` ``mixed_landmarks``, report 003's choice between it and the landmarks' box), and a message
    when the landmarks' box was taken."""
    rec = stage_record(can, stage)
    coarse = rec.volume(can, array=rec.apply(can.array.astype(np.float32), order=1))
    # only the body can hold a kidney: skipping the air around it saves windows (the padding is air too)
    body = Crop(body_box(coarse.array, stage.mask_value), coarse.shape)
    body_vol = body.volume(coarse, fill=stage.mask_value)
    probs = predict_volume(predictor, body_vol, stage, progress)
    fg = stage.foreground(probs) >= stage.threshold
    comps = largest_components(fg, stage.keep_components, stage.min_component_ml, coarse.voxel_volume_ml())
    boxes = [box_from_mask(m) for m in comps]
    seg = tuple((min(b[n][0] for b in boxes), max(b[n][1] for b in boxes)) for n in range(3)) if boxes else None
    box, messages = seg, []
    if stage.box_rule == "mixed_landmarks":
        from ..engine.landmarks import landmark_box, mixed_box

        box = mixed_box(seg, landmark_box(predictor.head(body_vol, "landmarks")))
        if box is not None and box != seg:
            messages.append(f"stage 1: the landmarks' box ({_width_mm(box, coarse)} mm wide) replaced the "
                            f"segmentation's ({_width_mm(seg, coarse)}) (report 003's mixed box rule)")
    if box is None:
        return None, messages
    margin = [stage.margin_mm / s for s in can.spacing_zyx]
    return expand_box(rec.box_to_input(body.inner(box).box), margin, shape=can.shape), messages  # type: ignore[arg-type]


def _width_mm(box: Optional[Box], vol: Volume) -> str:
    return "none" if box is None else f"{(box[2][1] - box[2][0]) * vol.spacing_zyx[2]:.0f}"


def body_box(coarse: np.ndarray, air_hu: float) -> Box:
    """Box ``(k, j, i)`` around everything denser than air (> -500 HU) plus two voxels; the whole array if none."""
    dense = coarse > max(-500.0, air_hu + 1.0)
    if not dense.any():
        return tuple((0, n) for n in coarse.shape)  # type: ignore[return-value]
    return expand_box(box_from_mask(dense), (2, 2, 2), shape=coarse.shape)


def world_box_to_index(can: Volume, roi: RoiWorld) -> Box:
    """The index box ``(k, j, i)`` of ``can`` that covers the LPS box ``roi``, clipped to the scan."""
    corners = np.array([[x, y, z] for x in (roi.lo[0], roi.hi[0]) for y in (roi.lo[1], roi.hi[1]) for z in (roi.lo[2], roi.hi[2])])
    idx = can.world_to_index(corners)  # (i, j, k)
    lo = np.floor(idx.min(axis=0) + 0.5).astype(int)
    hi = np.ceil(idx.max(axis=0) + 0.5).astype(int)
    box = tuple((int(max(lo[a], 0)), int(min(hi[a], can.shape[2 - a]))) for a in (2, 1, 0))
    if any(b <= a for a, b in box):
        raise InputError("the region of interest does not overlap the image")
    return box  # type: ignore[return-value]


def index_box_to_world(can: Volume, box: Box):
    """The LPS corners ``(lo, hi)`` (mm, rounded to 0.01) of the index box ``box`` of ``can``, voxel edges included."""
    lo = can.index_to_world([box[2][0] - 0.5, box[1][0] - 0.5, box[0][0] - 0.5])
    hi = can.index_to_world([box[2][1] - 0.5, box[1][1] - 0.5, box[0][1] - 0.5])
    return tuple(round(float(v), 2) for v in np.minimum(lo, hi)), tuple(round(float(v), 2) for v in np.maximum(lo, hi))
