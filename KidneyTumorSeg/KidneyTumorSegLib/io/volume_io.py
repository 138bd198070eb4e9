"""Reading CT volumes and label maps from disk; Volume <-> SimpleITK.

Everything goes through SimpleITK, and the geometry is kept exactly as
SimpleITK reports it (LPS origin, spacing, direction; no reorientation): the
pipeline reorients internally and writes its results back on this grid.
Arrays are ``[k, j, i]`` (``GetArrayFromImage`` order), spacing and origin
``(x, y, z)`` in mm; see ``volume.py``.

Inputs: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage
(``.mha``, ``.mhd``), a DICOM series folder (any transfer syntax GDCM reads,
JPEG 2000 included) or one file of it, and a KiTS case folder
(``case_XXXXX/imaging.nii.gz``). Problems with the input raise ``InputError``
with a message meant for the user. NaN/Inf voxels of a float NIfTI, which
ITK reads as 0, are put back (``nifti_nonfinite_restored``) so they are
refused like in any other format; a DICOM series with missing or unevenly
spaced slices is refused (``dicom_checks``). A file's header is checked before
ITK reads it (``formats.header_problem``, ``formats.data_shortfall``): headers
that crash ITK, and data shorter than the header claims, are refused.

CT checks live in ``validate.py``, case discovery in ``cases.py`` and path
classification in ``formats.py``; their public names are re-exported here so
``from KidneyTumorSegLib.io.volume_io import find_cases, validate_ct`` keeps working.
"""
from __future__ import annotations

import gzip
import logging
import math
import re
import struct
import zlib
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .cases import case_id_for, find_cases, is_kits_case
from .dicom_checks import check_slice_positions, slice_positions
from .formats import (
    IMAGE_SUFFIXES, KITS_IMAGE, KITS_LABEL, SUPPORTED, PathLike, data_shortfall, dicom_series, header_problem,
    image_suffix, is_dicom_file,
)
from .validate import MAX_SPACING_MM, MIN_SPACING_MM, validate_ct
from ..geometry.volume import InputError, Volume

__all__ = [
    "read_volume", "read_label", "sitk_to_volume", "volume_to_sitk", "nifti_nonfinite_restored", "DICOM_TAGS",
    # re-exported from formats, validate and cases
    "IMAGE_SUFFIXES", "KITS_IMAGE", "KITS_LABEL", "SUPPORTED", "PathLike", "dicom_series", "image_suffix",
    "is_dicom_file", "MIN_SPACING_MM", "MAX_SPACING_MM", "validate_ct", "find_cases", "case_id_for", "is_kits_case",
]

logger = logging.getLogger(__name__)

_FORMATS = {".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "metaimage", ".mhd": "metaimage"}
DICOM_TAGS = {
    "modality": "0008|0060",
    "patient_id": "0010|0020",
    "series_description": "0008|103e",
    "study_instance_uid": "0020|000d",
    "series_instance_uid": "0020|000e",
}


# --------------------------------------------------------------------------
# Volume <-> SimpleITK
# --------------------------------------------------------------------------
def sitk_to_volume(img: sitk.Image, meta: Optional[Dict[str, Any]] = None) -> Volume:
    """SimpleITK image to ``Volume`` with its geometry unchanged (array ``[k, j, i]``)."""
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"expected a single-channel image, got {img.GetNumberOfComponentsPerPixel()} components per voxel"
        )
    return Volume(
        sitk.GetArrayFromImage(img), img.GetSpacing(), img.GetOrigin(), img.GetDirection(), dict(meta or {})
    )


def volume_to_sitk(vol: Volume) -> sitk.Image:
    """``Volume`` to SimpleITK image with the same voxels and geometry (bool becomes uint8)."""
    arr = vol.array
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=False)
    img.SetSpacing(vol.spacing)
    img.SetOrigin(vol.origin)
    img.SetDirection(vol.direction)
    return img


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------
def read_volume(path: PathLike, validate: bool = True) -> Volume:
    """Read a CT volume from a file, DICOM series folder or KiTS case folder.

    Returns the voxels in the stored type (usually int16 HU) as ``[k, j, i]``
    with SimpleITK's LPS geometry. ``meta`` holds ``source`` (the path given),
    ``format`` (``nifti``, ``nrrd``, ``metaimage``, ``dicom``, ``kits-case``),
    for DICOM ``modality``, ``patient_id``, ``series_description``,
    ``study_instance_uid``, ``series_instance_uid`` where present, and, when
    ``validate`` is True, ``warnings`` from ``validate_ct`` (fatal problems
    raise ``InputError``).
    """
    img, meta = _read_any(Path(path), label=False)
    vol = sitk_to_volume(img, meta)
    if validate:
        warnings = validate_ct(vol)
        for w in warnings:
            logger.warning("%s", w)
        vol.meta["warnings"] = warnings
    return vol


def read_label(path: PathLike) -> Volume:
    """Read a label map (KiTS ``segmentation.nii.gz``, ``case_XXXXX.nii.gz``, a KiTS case folder).

    Values must be non-negative integers; float storage with integer values
    is converted to the smallest unsigned integer type that holds them.
    No Hounsfield checks. Geometry as SimpleITK reports it, array ``[k, j, i]``.
    """
    p = Path(path)
    img, meta = _read_any(p, label=True)
    vol = sitk_to_volume(img, meta)
    arr = vol.array
    name = meta["source"]
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InputError(f"'{name}' is not a label map: it contains NaN or infinite values")
        if not np.array_equal(arr, np.round(arr)):
            raise InputError(f"'{name}' is not a label map: it has non-integer values")
    elif arr.dtype.kind not in "iub":
        raise InputError(f"'{name}' is not a label map: voxel type {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise InputError(f"'{name}' is not a label map: it has negative values (minimum {arr.min()})")
    if arr.dtype.kind in "fb":
        top = int(arr.max()) if arr.size else 0
        dtype = np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.uint32
        vol = vol.with_array(arr.astype(dtype))
    return vol


def _read_any(p: Path, label: bool) -> Tuple[sitk.Image, Dict[str, Any]]:
    if not p.exists():
        raise InputError(f"cannot read '{p}' as an image: no such file or folder")
    if p.is_dir():
        kits_file = p / (KITS_LABEL if label else KITS_IMAGE)
        if kits_file.is_file():
            img, meta = _read_file(kits_file)
            meta.update(source=str(p), format="kits-case", file=str(kits_file))
            return img, meta
        if label:
            raise InputError(f"cannot read '{p}' as a label map: the folder holds no KiTS {KITS_LABEL}")
        return _read_dicom(p)
    if is_dicom_file(p):
        return _read_dicom(p.parent, wanted_file=p, source=p)
    return _read_file(p)


def _read_file(p: Path) -> Tuple[sitk.Image, Dict[str, Any]]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    problem = header_problem(p)  # headers that crash ITK
    try:
        if problem is None:
            reader.ReadImageInformation()
    except RuntimeError as exc:
        problem = _reason(exc)
    if problem is None:
        squeeze = _check_layout(p, reader.GetSize(), reader.GetNumberOfComponents())
        # before ITK allocates what the header claims (and reads missing data as zeros)
        component = sitk.Image([1, 1], reader.GetPixelID()).GetSizeOfPixelComponent()
        problem = data_shortfall(p, reader.GetSize(), component)
    if problem is not None:
        raise InputError(f"cannot read '{p}' as an image: {problem}")
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read '{p}' as an image: {_reason(exc)}") from None
    suffix = image_suffix(p)
    if squeeze is not None:
        img = _squeeze(p, img, squeeze)
    if suffix in (".nii", ".nii.gz"):
        img = nifti_nonfinite_restored(p, img)
    return img, {"source": str(p), "format": _FORMATS.get(suffix, "other")}


def _check_layout(p: Path, size: Sequence[int], ncomp: int) -> Optional[int]:
    """Reject 2D, multi-component and ambiguous 4D images; return a 4D axis to squeeze, if any."""
    size = tuple(int(s) for s in size)
    if ncomp > 1:
        raise InputError(
            f"'{p}' is a multi-component image ({ncomp} values per voxel, such as RGB colour); "
            f"expected a single-channel CT volume"
        )
    if len(size) < 3 or (len(size) == 3 and min(size) <= 1):
        raise InputError(f"'{p}' is a 2D image (size {size}); expected a 3D CT volume")
    if len(size) == 4:
        singles = [a for a, s in enumerate(size) if s == 1]
        if len(singles) == 1:
            return singles[0]
        raise InputError(
            f"'{p}' is a 4D image of size {size}; only a 4D image with exactly one axis of size 1 "
            f"can be used as a 3D volume"
        )
    if len(size) > 4:
        raise InputError(f"'{p}' is a {len(size)}D image of size {size}; expected a 3D CT volume")
    return None


def _squeeze(p: Path, img: sitk.Image, axis: int) -> sitk.Image:
    size = list(img.GetSize())
    size[axis] = 0  # Extract drops axes of size 0
    try:
        return sitk.Extract(img, size, [0] * len(size))
    except RuntimeError as exc:
        raise InputError(f"cannot reduce the 4D image '{p}' to 3D: {_reason(exc)}") from None


def _read_dicom(
    folder: Path, wanted_file: Optional[Path] = None, source: Optional[Path] = None
) -> Tuple[sitk.Image, Dict[str, Any]]:
    source = source or folder
    series = dicom_series(folder)
    if not series:
        raise InputError(
            f"cannot read '{source}' as an image: the folder holds no DICOM series and no KiTS {KITS_IMAGE}"
        )
    if wanted_file is not None:
        wanted = wanted_file.resolve()
        chosen = [s for s in series if any(Path(f).resolve() == wanted for f in s[1])]
        series_id, files = chosen[0] if chosen else series[0]
    else:
        # Most files first; ties broken by series id so the choice is repeatable.
        series_id, files = sorted(series, key=lambda s: (-len(s[1]), s[0]))[0]
        if len(series) > 1:
            logger.info(
                "'%s' holds %d DICOM series; reading the one with most files (%d files, series %s); others: %s",
                folder, len(series), len(files), series_id or "<no uid>",
                ", ".join(f"{sid or '<no uid>'} ({len(f)} files)" for sid, f in series if sid != series_id),
            )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    reader.MetaDataDictionaryArrayUpdateOn()
    # ITK's stderr warning on uneven slices is replaced by check_slice_positions' message.
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.GlobalWarningDisplayOff()
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read '{source}' as an image: {_reason(exc)}") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)
    if img.GetDimension() == 3 and img.GetSize()[2] == len(files):
        uneven = check_slice_positions(f"'{source}'", slice_positions(reader, len(files), img.GetDirection()))
        if uneven:
            logger.warning("%s", uneven)
    meta: Dict[str, Any] = {"source": str(source), "format": "dicom", "dicom_files": len(files), "dicom_series": len(series),
                            "dicom_paths": tuple(str(f) for f in files)}  # in slice order (DICOM SEG references)
    for key, tag in DICOM_TAGS.items():
        if reader.HasMetaDataKey(0, tag):
            value = reader.GetMetaData(0, tag).strip()
            if value:
                meta[key] = value
    squeeze = _check_layout(source, img.GetSize(), img.GetNumberOfComponentsPerPixel())
    if squeeze is not None:
        img = _squeeze(source, img, squeeze)
    return img, meta


def nifti_nonfinite_restored(p: PathLike, img: sitk.Image) -> sitk.Image:
    """``img`` (read by SimpleITK from the NIfTI-1 file ``p``) with its NaN/Inf voxels put back.

    ITK's NIfTI library replaces every NaN and infinite float voxel with 0 as it
    reads (then applies ``scl_slope``/``scl_inter``), so a corrupt float image
    would pass as a valid one. Where the read image holds that fill value at
    all, the stored floats are scanned in chunks and the non-finite ones are
    restored (scaled like the rest). Images of other types, and files whose
    data does not match the image read, come back unchanged.
    """
    layout = _nifti_float_layout(Path(p))
    if layout is None or img.GetNumberOfComponentsPerPixel() != 1:
        return img
    dtype, offset, slope, inter = layout
    scaled = math.isfinite(slope) and slope != 0.0
    view = sitk.GetArrayViewFromImage(img)
    fills = {0.0, 0.0 * slope + inter if scaled else 0.0}
    if view.dtype.kind != "f" or not any(np.any(view == v) for v in fills):
        return img
    n = int(view.size)
    step = (1 << 24) // dtype.itemsize
    arr: Optional[np.ndarray] = None
    opener = gzip.open if image_suffix(p) == ".nii.gz" else open
    try:
        with opener(p, "rb") as f:
            f.seek(offset)
            for start in range(0, n, step):
                buf = f.read(min(step, n - start) * dtype.itemsize)
                stored = np.frombuffer(buf[: len(buf) - len(buf) % dtype.itemsize], dtype)  # a cut file: whole values
                bad = np.flatnonzero(~np.isfinite(stored))
                if bad.size:
                    if arr is None:
                        arr = sitk.GetArrayFromImage(img)
                    values = stored[bad].astype(np.float64)
                    with np.errstate(invalid="ignore"):
                        arr.reshape(-1)[start + bad] = values * slope + inter if scaled else values
                if stored.size < min(step, n - start):
                    return img  # the data is shorter than the image: leave it to the reader's checks
    except (OSError, EOFError, zlib.error):
        return img
    if arr is None:
        return img
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


def _nifti_float_layout(p: Path) -> Optional[Tuple[np.dtype, int, float, float]]:
    """``(dtype, vox_offset, scl_slope, scl_inter)`` of a float32/float64 NIfTI-1 file, else None."""
    opener = gzip.open if image_suffix(p) == ".nii.gz" else open
    try:
        with opener(p, "rb") as f:
            hdr = f.read(348)
    except (OSError, EOFError, zlib.error):
        return None
    if len(hdr) < 348:
        return None
    end = "<" if struct.unpack("<i", hdr[:4])[0] == 348 else ">"
    if struct.unpack(end + "i", hdr[:4])[0] != 348:
        return None
    code = {16: "f4", 64: "f8"}.get(struct.unpack(end + "h", hdr[70:72])[0])
    if code is None:
        return None
    vox_offset, slope, inter = struct.unpack(end + "3f", hdr[108:120])
    offset = int(vox_offset) if math.isfinite(vox_offset) and vox_offset >= 352 else 352
    return np.dtype(end + code), offset, float(slope), float(inter) if math.isfinite(inter) else 0.0


def _reason(exc: BaseException) -> str:
    """The useful part of an ITK/SimpleITK exception message."""
    msg = str(exc)
    if "Unable to determine ImageIO reader" in msg:
        return f"not a recognised image format, or a corrupt file (supported: {SUPPORTED})"
    if "does not exist" in msg:
        return "no such file"
    if "Unknown component type" in msg:
        return "its voxel type is not one ITK can read (check the header's data type)"
    if "File cannot be read" in msg:  # MetaImage: the errno it adds ("No such file") is stale
        return "the header or the voxel data is invalid, or the data is truncated"
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    kept = []
    for ln in lines:
        if ln.startswith("Exception thrown in SimpleITK") or re.match(r"^/\S+:\d+:?$", ln):
            continue
        ln = re.sub(r"^(ITK ERROR|s?itk::ERROR):\s*(\w+\(0x[0-9a-f]+\):\s*)?", "", ln)
        kept.append(ln)
    nrrd = [ln for ln in kept if ln.startswith("[nrrd]")]
    if nrrd:  # teem's chain of callers: the innermost message says what is wrong
        kept = [re.sub(r"^\[nrrd\] \w+: *", "", ln) for ln in nrrd[-2:]]
        kept = [ln for ln in kept if ln and ln != "trouble"] or kept
    text = "; ".join(kept) or msg.strip() or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."
