"""Checking that a ``Volume`` is a usable CT in Hounsfield units.

Fatal problems raise ``InputError`` with a message meant for the user; odd
but usable scans give warnings. Works on any ``Volume`` (read from disk or
built from a Slicer array): array ``[k, j, i]``, spacing ``(x, y, z)`` mm.
"""
from __future__ import annotations

from typing import List

import numpy as np

from ..geometry.volume import InputError, Volume

# Plausibility limits for a CT's voxel spacing (mm).
MIN_SPACING_MM, MAX_SPACING_MM = 0.05, 50.0
# Farther from the scanner's origin than this (mm) is a corrupt header; at about 1e16 mm a voxel step is lost
# to rounding.
MAX_ORIGIN_MM = 1e5


def _not_ct_message(name: str, modality: str) -> str:
    return f"{name} is a {modality} series (DICOM Modality {modality}), not CT; this tool segments CT scans only"


def validate_ct(vol: Volume) -> List[str]:
    """Check that ``vol`` is a usable CT in Hounsfield units; return warnings.

    Raises ``InputError`` for: a non-CT DICOM modality (``meta['modality']``),
    a 2D image, non-numeric voxels, NaN or infinite voxels, a constant image,
    intensities that cannot be HU (nothing above -500 HU, or no negative
    value at all: raw stored values without rescale, MR, a mask), absurd
    spacing (below 0.05 mm or above 50 mm), a NaN or infinite origin or
    direction, an origin more than 100 m away, and a degenerate direction matrix.
    Returns warnings for odd but usable scans: thick slices, coarse or very
    fine pixels, few slices, extreme intensities, no air or no bone, default
    geometry. Works on any ``Volume`` (also arrays coming from Slicer).
    """
    source = vol.meta.get("source")
    name = f"'{source}'" if source else "the image"
    warnings: List[str] = []
    modality = str(vol.meta.get("modality", "") or "").strip().upper()
    if modality and modality != "CT":
        raise InputError(_not_ct_message(name, modality))
    arr = vol.array
    if min(arr.shape) < 2:
        raise InputError(f"{name} is a 2D image (array shape {arr.shape}); expected a 3D CT volume")
    if arr.dtype.kind not in "iuf":
        raise InputError(f"{name} has voxels of type {arr.dtype}; expected integer or floating-point intensities")
    if arr.dtype.kind == "f":
        bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise InputError(f"{name} contains {bad} NaN or infinite voxel(s); the image is corrupt")
    lo, hi = arr.min().item(), arr.max().item()
    if lo == hi:
        raise InputError(f"{name} is empty: every voxel has the value {lo:g}")
    if hi < -500:
        raise InputError(
            f"{name} does not look like a CT in Hounsfield units: its intensities range from {lo:g} to {hi:g}, "
            f"so nothing is as dense as soft tissue (about 40 HU)"
        )
    if lo >= 0:
        raise InputError(
            f"{name} does not look like a CT in Hounsfield units: its intensities range from {lo:g} to {hi:g}, "
            f"but a CT has air near -1000 HU and fat near -100 HU. It may not be a CT, or its values may be "
            f"stored without the DICOM rescale slope/intercept (values offset by +1024 need 1024 subtracted)"
        )
    if lo > -500:
        warnings.append(f"{name}: lowest intensity is {lo:g} HU, so there is no air in the image; is it cropped?")
    if hi < 150:
        warnings.append(f"{name}: highest intensity is {hi:g} HU, so there is no bone or contrast in the image")
    if lo < -4000 or hi > 10000:
        warnings.append(f"{name}: extreme intensities from {lo:g} to {hi:g} HU (metal, or corrupt voxels)")
    warnings.extend(_check_geometry(vol, name))
    return warnings


def _check_geometry(vol: Volume, name: str) -> List[str]:
    warnings: List[str] = []
    spacing = np.asarray(vol.spacing)
    if spacing.min() < MIN_SPACING_MM or spacing.max() > MAX_SPACING_MM:
        raise InputError(
            f"{name} has implausible voxel spacing {tuple(round(s, 4) for s in vol.spacing)} mm (x, y, z); "
            f"a CT has pixels of about 0.3-1 mm and slices of 0.5-10 mm. Check the file's header"
        )
    d = vol.direction_matrix
    if not (np.isfinite(d).all() and np.isfinite(vol.origin).all()):
        raise InputError(
            f"{name} has a non-finite origin {vol.origin} or direction matrix {vol.direction}; check the file's header"
        )
    if np.abs(vol.origin).max() > MAX_ORIGIN_MM:
        raise InputError(f"{name} has an implausible origin {vol.origin} mm, more than 100 m from the scanner's; "
                         f"check the file's header")
    if abs(np.linalg.det(d)) < 1e-3:
        raise InputError(f"{name} has a degenerate direction matrix {vol.direction}; check the file's header")
    # The slice axis is the index axis closest to the patient's head-foot (LPS z) axis.
    slice_axis = int(np.argmax(np.abs(d[2, :])))  # in (i, j, k) order
    in_plane = [float(spacing[a]) for a in range(3) if a != slice_axis]
    thickness = float(spacing[slice_axis])
    n_slices = vol.shape[2 - slice_axis]
    if thickness > 6.0:
        warnings.append(f"{name}: thick slices ({thickness:g} mm); results are less accurate above 5 mm")
    if max(in_plane) > 2.0 or min(in_plane) < 0.2:
        warnings.append(f"{name}: unusual pixel size {in_plane[0]:g} x {in_plane[1]:g} mm for a CT")
    if n_slices < 10:
        warnings.append(f"{name}: only {n_slices} slices")
    if (
        np.allclose(vol.spacing, 1.0)
        and np.allclose(vol.origin, 0.0)
        and np.allclose(d, np.eye(3))
    ):
        warnings.append(f"{name}: default geometry (1 mm voxels at the origin); the spacing may have been lost")
    return warnings
