"""Validation during training: stage Dice on whole validation items with the real inference engine."""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import torch

from KidneyTumorSegLib.config import RuntimeConfig
from KidneyTumorSegLib.engine.inference import NetworkPredictor

from .stage_cache import StageCache
from .sampler import stage_target


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * float(np.logical_and(a, b).sum()) / s


def validate(model: torch.nn.Module, cache: StageCache, stage, device: str, overlap: float = 0.25) -> Dict[str, float]:
    """Stage Dice on whole validation items with the real inference engine (no TTA).

    The roi and kidney stages report kidney Dice (label > 0), the tumor
    stage tumor Dice (label 2), as the KiTS19 metrics define them.
    """
    was_training = model.training
    model.eval()
    runtime = RuntimeConfig(device=device, tta=1, overlap=overlap, sw_batch_size=2)
    predictor = NetworkPredictor(stage, [model], runtime)
    scores: List[float] = []
    try:
        for item in cache.items:
            probs = predictor.predict(np.asarray(item.image()))
            pred = stage.foreground(probs) >= stage.threshold
            scores.append(_dice(pred, stage_target(np.asarray(item.label()), stage) > 0))
    finally:
        model.train(was_training)
    name = "tumor_dice" if stage.role == "tumor" else "kidney_dice"
    return {name: float(np.mean(scores))} if scores else {}
