"""An nnU-Net model as a cascade stage: the cascade's volume protocol on top of :class:`nnunet_model.NnunetModel`.

The cascade hands a stage a :class:`Volume` on its canonical grid (identity
direction: array ``(k, j, i)`` running superior, posterior, left) and wants
``(C, k, j, i)`` probabilities back on that grid. An nnU-Net model sees arrays
the way it was trained: nnU-Net does not reorient, so a model trained on
KiTS19/21/23 files saw their stored order (SimpleITK orientation code
``IPL``: index i toward inferior, j posterior, k left) and TotalSegmentator's
models saw the RAS-canonical files TotalSegmentator writes (``RAS``). The
stage turns the crop into that orientation (transposes and flips only, no
interpolation), runs the model at the crop's own spacing (nnU-Net resamples
to its own), and turns the result back.

Stages of one bundle that use the same model share one :class:`ModelRuns`:
the last run's probabilities for every role are kept, and a later stage whose
crop lies inside that run's grid (the tumor stage on a kidney's box inside
the kidney stage's region, with nothing masked) is answered from it without
running the model again. A full KiTS model alone is so run once.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence, Tuple

import numpy as np

from ..geometry.volume import Volume

log = logging.getLogger(__name__)

ROLES = ("kidney", "tumor")
_AXIS = {"L": (2, False), "R": (2, True), "P": (1, False), "A": (1, True), "S": (0, False), "I": (0, True)}


def orientation_plan(code: str) -> Tuple[Tuple[int, ...], Tuple[bool, ...]]:
    """For SimpleITK orientation ``code`` (letter n: where index axis n points; ``LPS`` = identity):
    the canonical array axes that become the oriented array's axes ``(k, j, i)``, and which are flipped."""
    code = str(code).upper()
    if len(code) != 3 or set(code) - set(_AXIS) or len({_AXIS[c][0] for c in code}) != 3:
        raise ValueError(f"orientation {code!r} is not a 3-letter code of one of L/R, P/A, S/I each (e.g. RAS, IPL)")
    per_index = [_AXIS[c] for c in code]  # index axes i, j, k
    axes = tuple(per_index[n][0] for n in (2, 1, 0))
    flips = tuple(per_index[n][1] for n in (2, 1, 0))
    return axes, flips


def to_orientation(arr: np.ndarray, spacing_zyx: Sequence[float], code: str):
    """A canonical ``(k, j, i)`` array (and its spacing) in orientation ``code``."""
    axes, flips = orientation_plan(code)
    out = np.transpose(arr, axes)
    flip_axes = tuple(n for n, f in enumerate(flips) if f)
    if flip_axes:
        out = np.flip(out, flip_axes)
    return np.ascontiguousarray(out), tuple(float(spacing_zyx[a]) for a in axes)


def from_orientation(probs: np.ndarray, code: str) -> np.ndarray:
    """Undo :func:`to_orientation` on ``(C, ...)`` probabilities."""
    axes, flips = orientation_plan(code)
    flip_axes = tuple(n + 1 for n, f in enumerate(flips) if f)
    if flip_axes:
        probs = np.flip(probs, flip_axes)
    inverse = np.argsort(axes)
    return np.ascontiguousarray(np.transpose(probs, [0] + [int(a) + 1 for a in inverse]))


class ModelRuns:
    """One model's runs on canonical volumes, the last one kept for stages that ask inside it."""

    def __init__(self, model, orientation: str) -> None:
        orientation_plan(orientation)
        self.model, self.orientation = model, orientation
        self._last: Optional[Tuple[Volume, np.ndarray]] = None
        self.runs = 0  # model runs so far (the benchmark and tests read it)

    def forget(self) -> None:
        self._last = None

    def probabilities(self, vol: Volume, reuse: bool) -> np.ndarray:
        """``(2, k, j, i)``: kidney (+tumor) and tumor probability on ``vol``'s grid."""
        if reuse and self._last is not None:
            hit = _from_last(self._last[0], self._last[1], vol)
            if hit is not None:
                return hit
        arr, spacing = to_orientation(vol.array, vol.spacing_zyx, self.orientation)
        probs = from_orientation(self.model.role_probabilities(arr, spacing, ROLES), self.orientation)
        self.runs += 1
        self._last = (vol, probs)
        return probs


AIR_HU = -1000.0  # a crop's padding beyond the scan is -1024 HU: no kidney or tumor there


def _from_last(big: Volume, probs: np.ndarray, small: Volume) -> Optional[np.ndarray]:
    """``small``'s probabilities cut from the last run on ``big``, or None when that run did not see ``small``.

    Same spacing and direction, whole-voxel offset, the same voxels where the two overlap; voxels of
    ``small`` outside ``big`` are accepted only as air (the padding of a crop past the scan's edge, or
    air the last run did not need), where the answer is 0.
    """
    if not (np.allclose(big.spacing, small.spacing, atol=1e-6) and np.allclose(big.direction, small.direction, atol=1e-6)):
        return None
    offset = big.world_to_index(np.asarray(small.origin))  # (i, j, k)
    rounded = np.rint(offset)
    if not np.allclose(offset, rounded, atol=1e-3):
        return None
    start = [int(v) for v in rounded[::-1]]  # (k, j, i)
    src = tuple(slice(max(s, 0), min(s + n, m)) for s, n, m in zip(start, small.shape, big.shape))
    if any(sl.stop <= sl.start for sl in src):
        return None
    dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start))
    if not np.array_equal(big.array[src], small.array[dst]):
        return None  # same place, other voxels (a masked crop): run the model
    outside = np.ones(small.shape, bool)
    outside[dst] = False
    if outside.any() and not (small.array[outside] <= AIR_HU).all():
        return None
    out = np.zeros((probs.shape[0],) + small.shape, np.float32)
    out[(slice(None),) + dst] = probs[(slice(None),) + src]
    return out


class NnunetStage:
    """A cascade stage predictor (``predict(volume) -> (2, k, j, i)``) for one role of an nnU-Net model."""

    def __init__(self, runs: ModelRuns, role: str, reuse: bool = True) -> None:
        if role not in ("roi", "kidney", "tumor"):
            raise ValueError(f"unknown stage role {role!r}")
        self.runs, self.role, self.reuse = runs, role, reuse
        self.channel = 1 if role == "tumor" else 0

    def predict(self, vol: Volume, progress=None) -> np.ndarray:
        # nnU-Net's own sliding window reports no progress: the cascade reports this stage at its start and end
        fg = self.runs.probabilities(vol, self.reuse)[self.channel]
        return np.stack([1.0 - fg, fg]).astype(np.float32, copy=False)
