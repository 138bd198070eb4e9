"""A stage's foreground probability on a volume's own grid: resample, predict, resample back.

A stage predictor is anything with ``predict(volume, progress=None) ->
probabilities`` where ``volume`` is a :class:`Volume` in HU on the stage's
grid (its geometry says where it is in the world) and the result is a float
array ``(C, k, j, i)`` on that grid; ``progress(fraction)``, when given, is
called as the prediction advances (the sliding window's windows done). A
predictor whose ``predict`` takes no ``progress`` is called without it.
Networks (``pipeline.StageNetwork``), nnU-Net models
(``nnunet_stage.NnunetStage``) and exact reference predictors
(``reference.ReferencePredictor``) all fit.
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional

import numpy as np

from ..config import StageConfig
from ..geometry.records import Resample, resample_record
from ..geometry.volume import Volume

Fraction = Callable[[float], None]  # progress within one prediction, 0..1


def stage_record(vol: Volume, stage: StageConfig) -> Resample:
    """The resampling that brings ``vol`` to ``stage``'s spacing (the identity for a stage on the native grid)."""
    return resample_record(vol.shape, vol.spacing_zyx, vol.spacing_zyx if stage.native_grid else stage.spacing)


def predict_volume(predictor, vol: Volume, stage: StageConfig, progress: Optional[Fraction] = None) -> np.ndarray:
    """``predictor``'s probabilities ``(C, k, j, i)`` of ``vol``, checked against ``vol``'s grid."""
    if progress is not None and _takes_progress(predictor):
        probs = np.asarray(predictor.predict(vol, progress=progress))
    else:  # a predictor written before progress was passed (``predict(volume)``) still fits
        probs = np.asarray(predictor.predict(vol))
    if probs.ndim != 4 or tuple(probs.shape[1:]) != vol.shape:
        raise RuntimeError(f"stage {stage.name!r}: predictor returned shape {probs.shape}, expected (C,)+{vol.shape}")
    return probs


def _takes_progress(predictor) -> bool:
    try:
        params = inspect.signature(predictor.predict).parameters
    except (TypeError, ValueError):
        return False
    return "progress" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def predict_on_grid(vol: Volume, stage: StageConfig, predictor, progress: Optional[Fraction] = None) -> np.ndarray:
    """Foreground probability of ``stage`` on ``vol``'s own grid (float32, (k, j, i)).

    Resamples to the stage spacing, predicts, and resamples the probability
    back linearly, so thresholds are applied at the output resolution.
    """
    rec = stage_record(vol, stage)
    src = vol.array if rec.is_identity else vol.array.astype(np.float32, copy=False)
    svol = rec.volume(vol, array=rec.apply(src, order=1))
    probs = predict_volume(predictor, svol, stage, progress)
    fg = np.ascontiguousarray(stage.foreground(probs), dtype=np.float32)
    del probs
    return rec.invert(fg, order=1)
