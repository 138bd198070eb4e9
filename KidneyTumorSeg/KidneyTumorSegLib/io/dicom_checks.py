"""Checks of a DICOM series' slice positions before it is used as one volume.

ITK stacks a series' slices (sorted by GDCM along the slice normal) on an
even grid whose step is the distance from the first slice to the last over
the number of steps, and only prints a warning to stderr when the slices are
not evenly spaced. A missing slice therefore shifts every slice beyond it
and stretches the whole volume. ``check_slice_positions`` refuses such a
series with a message naming the gap, and one whose spacing varies.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..geometry.volume import InputError

IMAGE_POSITION = "0020|0032"  # Image Position (Patient), mm
# A step this many times the median one means slices are missing.
GAP_FACTOR = 1.5
# A slice further than this fraction of the median step from the even grid, or two
# slices closer than this fraction of it, means the spacing varies.
UNEVEN_FRACTION = 0.2
CLOSE_FRACTION = 0.5
# Deviations below this (mm) are rounding in the headers: not worth a warning.
ROUNDING_MM = 0.01
_CONSEQUENCE = "read as one volume it would be on a wrong slice grid"


def slice_positions(reader: sitk.ImageSeriesReader, n_files: int, direction: Sequence[float]) -> Optional[np.ndarray]:
    """Positions (mm) of the files' slices along the slice normal, in the reader's order.

    ``reader`` has executed with ``MetaDataDictionaryArrayUpdateOn``;
    ``direction`` is the image's (its third column is the slice normal).
    None when a file lacks a readable Image Position (Patient).
    """
    normal = np.asarray(direction, dtype=float).reshape(3, 3)[:, 2]
    out = []
    for i in range(n_files):
        if not reader.HasMetaDataKey(i, IMAGE_POSITION):
            return None
        try:
            xyz = [float(v) for v in reader.GetMetaData(i, IMAGE_POSITION).split("\\")]
        except ValueError:
            return None
        if len(xyz) != 3:
            return None
        out.append(float(np.dot(normal, xyz)))
    return np.asarray(out)


def check_slice_positions(name: str, positions: Optional[np.ndarray]) -> Optional[str]:
    """Raise ``InputError`` when slices are missing or unevenly spaced; return a warning, if any.

    ``name``: the input as shown to the user (quoted path). ``positions``: see
    :func:`slice_positions`; None or fewer than 3 slices are not checked, nor
    are slices that all lie at one position (not a stack of slices).
    """
    if positions is None or len(positions) < 3:
        return None
    steps = np.diff(positions)
    median = float(np.median(steps))
    if abs(median) < 1e-3:
        return None
    steps = steps * np.sign(median)  # the stacking direction counts as positive
    median = abs(median)
    gaps = np.flatnonzero(steps > GAP_FACTOR * median)
    if gaps.size:
        i = int(gaps[0])
        missing = max(int(round(steps[i] / median)) - 1, 1)
        more = f"; {gaps.size - 1} more gap{'s' if gaps.size > 2 else ''} further on" if gaps.size > 1 else ""
        raise InputError(
            f"{name}: slices are missing from the DICOM series: the slice positions jump from "
            f"{_mm(positions[i])} mm to {_mm(positions[i + 1])} mm, a gap of {_mm(steps[i])} mm where the other "
            f"slices are {_mm(median)} mm apart (about {missing} slice{'s' if missing > 1 else ''} missing there"
            f"{more}); {_CONSEQUENCE}"
        )
    n = len(positions)
    even = positions[0] + np.arange(n) * (positions[-1] - positions[0]) / (n - 1)
    deviation = float(np.abs(positions - even).max())
    if deviation > UNEVEN_FRACTION * median or steps.min() < CLOSE_FRACTION * median:
        raise InputError(
            f"{name}: the DICOM series' slices are unevenly spaced: the steps between slice positions range "
            f"from {_mm(steps.min())} to {_mm(steps.max())} mm (median {_mm(median)} mm), so a slice lies up to "
            f"{_mm(deviation)} mm from an even grid; {_CONSEQUENCE}"
        )
    if deviation > ROUNDING_MM:
        grid = abs(positions[-1] - positions[0]) / (n - 1)
        return f"{name}: DICOM slice positions deviate up to {_mm(deviation)} mm from an even grid of {_mm(grid)} mm"
    return None


def _mm(x: float) -> str:
    return f"{round(float(x), 3):g}"
