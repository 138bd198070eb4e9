"""Reading CT volumes and label maps from disk, and checking that they are usable CTs.

Everything goes through SimpleITK, and the geometry is kept exactly as
SimpleITK reports it (LPS origin, spacing, direction; no reorientation): the
pipeline reorients internally and writes its results back on this grid.
Arrays are ``[k, j, i]`` (``GetArrayFromImage`` order), spacing and origin
``(x, y, z)`` in mm; see ``volume.py``.

Inputs: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage
(``.mha``, ``.mhd``), a DICOM series folder (any transfer syntax GDCM reads,
JPEG 2000 included) or one file of it, and a KiTS case folder
(``case_XXXXX/imaging.nii.gz``). Problems with the input raise ``InputError``
with a message meant for the user.
"""
from __future__ import annotations

import glob
import gzip
import logging
import re
import struct
import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .volume import InputError, Volume

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_FORMATS = {".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "metaimage", ".mhd": "metaimage"}
# Our own .seg.nrrd outputs may sit beside the inputs; they are never cases.
_NOT_CASES = (".seg.nrrd",)
KITS_IMAGE = "imaging.nii.gz"
KITS_LABEL = "segmentation.nii.gz"
DICOM_TAGS = {
    "modality": "0008|0060",
    "patient_id": "0010|0020",
    "series_description": "0008|103e",
    "study_instance_uid": "0020|000d",
    "series_instance_uid": "0020|000e",
}
SUPPORTED = "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), a DICOM series folder or a KiTS case folder"

# Plausibility limits for a CT in Hounsfield units and its voxel spacing (mm).
MIN_SPACING_MM, MAX_SPACING_MM = 0.05, 50.0


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
    if _is_dicom_file(p):
        return _read_dicom(p.parent, wanted_file=p, source=p)
    return _read_file(p)


def _read_file(p: Path) -> Tuple[sitk.Image, Dict[str, Any]]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"cannot read '{p}' as an image: {_reason(exc)}") from None
    squeeze = _check_layout(p, reader.GetSize(), reader.GetNumberOfComponents())
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read '{p}' as an image: {_reason(exc)}") from None
    suffix = image_suffix(p)
    if suffix == ".nii.gz":
        nbytes = img.GetNumberOfPixels() * img.GetNumberOfComponentsPerPixel() * img.GetSizeOfPixelComponent()
        if _gzip_truncated(p, nbytes):
            raise InputError(f"cannot read '{p}' as an image: the compressed file is truncated or corrupt")
    if squeeze is not None:
        img = _squeeze(p, img, squeeze)
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
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read '{source}' as an image: {_reason(exc)}") from None
    meta: Dict[str, Any] = {"source": str(source), "format": "dicom", "dicom_files": len(files), "dicom_series": len(series)}
    for key, tag in DICOM_TAGS.items():
        if reader.HasMetaDataKey(0, tag):
            value = reader.GetMetaData(0, tag).strip()
            if value:
                meta[key] = value
    squeeze = _check_layout(source, img.GetSize(), img.GetNumberOfComponentsPerPixel())
    if squeeze is not None:
        img = _squeeze(source, img, squeeze)
    return img, meta


def dicom_series(folder: PathLike) -> List[Tuple[str, Tuple[str, ...]]]:
    """DICOM series directly in ``folder`` (not in subfolders): ``[(series uid, files), ...]``."""
    try:
        if not any(entry.is_file() for entry in Path(folder).iterdir()):
            return []
    except OSError:
        return []
    folder = str(folder)
    # ITK prints "No Series were found" to stderr for every folder without DICOM;
    # here that is an answer, not a problem.
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.GlobalWarningDisplayOff()
    try:
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
        out = []
        for sid in ids:
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, sid)
            if files:
                out.append((sid, tuple(files)))
    except RuntimeError:
        return []
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)
    return out


def _is_dicom_file(p: Path) -> bool:
    # DICOM Part 10 files carry "DICM" after a 128-byte preamble, whatever their name.
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _gzip_truncated(p: Path, data_bytes: int) -> bool:
    """ITK's NIfTI reader accepts a truncated .nii.gz silently; catch it cheaply.

    gzip ends with the uncompressed size mod 2**32. For a whole file that is
    the NIfTI header (348 bytes or more) plus the voxel data; anything else
    (scaled data, several gzip members, a cut file) is settled by decompressing.
    """
    try:
        with open(p, "rb") as f:
            f.seek(-4, 2)
            isize = struct.unpack("<I", f.read(4))[0]
    except (OSError, struct.error):
        return True
    if 348 <= (isize - data_bytes) % (1 << 32) <= (1 << 20):
        return False
    try:
        with gzip.open(p, "rb") as g:
            while g.read(1 << 24):
                pass
    except (EOFError, OSError, zlib.error):
        return True
    return False


def _reason(exc: BaseException) -> str:
    """The useful part of an ITK/SimpleITK exception message."""
    msg = str(exc)
    if "Unable to determine ImageIO reader" in msg:
        return f"not a recognised image format, or a corrupt file (supported: {SUPPORTED})"
    if "does not exist" in msg:
        return "no such file"
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    kept = []
    for ln in lines:
        if ln.startswith("Exception thrown in SimpleITK") or re.match(r"^/\S+:\d+:?$", ln):
            continue
        ln = re.sub(r"^(ITK ERROR|sitk::ERROR):\s*(\w+\(0x[0-9a-f]+\):\s*)?", "", ln)
        kept.append(ln)
    text = "; ".join(kept) or msg.strip() or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."


# --------------------------------------------------------------------------
# CT plausibility
# --------------------------------------------------------------------------
def _not_ct_message(name: str, modality: str) -> str:
    return f"{name} is a {modality} series (DICOM Modality {modality}), not CT; this tool segments CT scans only"


def validate_ct(vol: Volume) -> List[str]:
    """Check that ``vol`` is a usable CT in Hounsfield units; return warnings.

    Raises ``InputError`` for: a non-CT DICOM modality (``meta['modality']``),
    a 2D image, non-numeric voxels, NaN or infinite voxels, a constant image,
    intensities that cannot be HU (nothing above -500 HU, or no negative
    value at all: raw stored values without rescale, MR, a mask), absurd
    spacing (below 0.05 mm or above 50 mm) and a degenerate direction matrix.
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


# --------------------------------------------------------------------------
# Finding cases
# --------------------------------------------------------------------------
def image_suffix(path: PathLike) -> str:
    """The image suffix of ``path`` (lower case, ``.nii.gz`` whole), or ``''``."""
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return ""


def _is_image_file(p: Path) -> bool:
    name = p.name.lower()
    return (
        p.is_file()
        and not name.startswith(".")
        and bool(image_suffix(p))
        and not name.endswith(_NOT_CASES)
    )


def is_kits_case(folder: PathLike) -> bool:
    return (Path(folder) / KITS_IMAGE).is_file()


def case_id_for(path: PathLike) -> str:
    """Case id from a name: ``case_00001.nii.gz`` -> ``case_00001``; folders keep their name."""
    p = Path(path)
    if p.is_dir():
        return p.name or p.resolve().name
    if p.name.lower() == KITS_IMAGE and is_kits_case(p.parent):
        return p.parent.resolve().name
    suffix = image_suffix(p)
    return p.name[: -len(suffix)] if suffix else p.stem


def _case_from_dir(p: Path) -> bool:
    return is_kits_case(p) or bool(dicom_series(p))


def find_cases(spec: PathLike) -> List[Tuple[str, Path]]:
    """Cases named by ``spec``, as ``[(case_id, path), ...]`` sorted by case id.

    ``spec`` is an image file, a DICOM file or series folder, a KiTS case
    folder, a folder of cases (image files, KiTS case folders and DICOM
    series subfolders; hidden files and ``.seg.nrrd`` outputs are skipped) or
    a glob pattern. Case ids come from the names (``.nii.gz`` etc. removed);
    clashing ids get ``_2``, ``_3``... in path order. Raises ``InputError``
    naming ``spec`` when nothing is found.
    """
    text = str(spec)
    p = Path(text)
    found: List[Path] = []
    if p.is_file():
        found = [p]
    elif p.is_dir():
        if is_kits_case(p):
            found = [p]
        else:
            for child in sorted(p.iterdir()):
                if child.name.startswith("."):
                    continue
                if _is_image_file(child) or (child.is_dir() and _case_from_dir(child)):
                    found.append(child)
            if not found and dicom_series(p):
                found = [p]
    elif any(c in text for c in "*?["):
        for match in sorted(glob.glob(text, recursive=True)):
            m = Path(match)
            if _is_image_file(m) or (m.is_dir() and _case_from_dir(m)):
                found.append(m)
    else:
        raise InputError(f"no such file or folder: '{text}'")
    if not found:
        raise InputError(f"no CT images found in '{text}' (looked for {SUPPORTED})")
    return _unique_ids(found)


def _unique_ids(paths: List[Path]) -> List[Tuple[str, Path]]:
    pairs = sorted(((case_id_for(q), q) for q in paths), key=lambda t: (t[0], str(t[1])))
    used = {cid for cid, _ in pairs}
    taken: set = set()
    out = []
    for cid, q in pairs:
        if cid in taken:
            n = 2
            while f"{cid}_{n}" in used or f"{cid}_{n}" in taken:
                n += 1
            logger.warning("case id '%s' is used by several inputs; '%s' becomes '%s_%d'", cid, q, cid, n)
            cid = f"{cid}_{n}"
        taken.add(cid)
        out.append((cid, q))
    return out
