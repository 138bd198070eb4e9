"""CT intensity normalisation of one stage (the network's input convention)."""
from __future__ import annotations

import numpy as np

from ..config import StageConfig


def normalise(array_hu: np.ndarray, stage: StageConfig) -> np.ndarray:
    """Clip ``array_hu`` (any shape, HU) to ``stage.window`` and normalise it.

    ``zscore``: ``(clipped - norm_mean) / norm_std`` with the stage's fixed
    training statistics (HU); ``minmax``: the window mapped linearly onto
    ``[0, 1]``; ``none``: clipped HU. Returns a new float32 array of the same
    shape; the input is never modified. Works in place on that one copy, so
    peak memory is the input plus one float32 volume.
    """
    lo, hi = (float(v) for v in stage.window)
    out = np.array(array_hu, dtype=np.float32, copy=True)
    np.clip(out, lo, hi, out=out)
    if stage.normalization == "zscore":
        if not stage.norm_std > 0:
            raise ValueError(f"stage {stage.name!r}: norm_std must be positive, got {stage.norm_std}")
        out -= np.float32(stage.norm_mean)
        out /= np.float32(stage.norm_std)
    elif stage.normalization == "minmax":
        out -= np.float32(lo)
        out /= np.float32(hi - lo)
    return out


def normalised_value(hu: float, stage: StageConfig) -> float:
    """What a single HU value becomes after :func:`normalise` (e.g. the padding value for air)."""
    return float(normalise(np.asarray([hu], dtype=np.float32), stage)[0])
