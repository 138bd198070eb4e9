"""What kind of input a path is: image suffixes, KiTS file names, DICOM detection.

The bottom layer shared by the reader (``volume_io``) and case discovery
(``cases``); it imports neither, so neither imports the other. It also reads
image headers before ITK does (``header_problem``, ``data_shortfall``): ITK
crashes on some MetaImage headers, allocates whatever a header claims before
finding the data short, and reads a short NIfTI or compressed MetaImage as
zeros without a word.
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Dict, List, Optional, Sequence, Tuple, Union

import SimpleITK as sitk

PathLike = Union[str, Path]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
KITS_IMAGE = "imaging.nii.gz"
KITS_LABEL = "segmentation.nii.gz"
SUPPORTED = "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), a DICOM series folder or a KiTS case folder"


def image_suffix(path: PathLike) -> str:
    """The image suffix of ``path`` (lower case, ``.nii.gz`` whole), or ``''``."""
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return ""


def is_dicom_file(p: Path) -> bool:
    """True when ``p`` is a DICOM Part 10 file, whatever its name."""
    # Part 10 files carry "DICM" after a 128-byte preamble.
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


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


# --------------------------------------------------------------------------
# Headers, read before ITK reads them
# --------------------------------------------------------------------------
_NIFTI_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
                1536: 16, 1792: 16, 2048: 32, 2304: 4}
_DEFLATE_MAX_RATIO = 1032  # deflate expands its input at most this much
_HEAD = 1 << 16  # NRRD and MetaImage headers are read up to this size


def header_problem(p: Path) -> Optional[str]:
    """Why ``p`` must not be handed to ITK at all, or None.

    ITK's MetaImage reader crashes the process (segmentation fault or abort) on
    an ``NDims`` below 1 or above 64, and allocates whatever ``CompressedDataSize``
    says (``-1``: 16 EiB) before it reads the file, and 0 yields wrong voxels.
    """
    if image_suffix(p) not in (".mha", ".mhd"):
        return None
    try:
        fields, start = _meta_header(p)
        source, start = _data_source(p, fields.get("elementdatafile", [""])[0], start)
        most = source.stat().st_size - start if source is not None else 1 << 62
    except OSError:
        return None  # ITK says what is wrong
    for value in fields.get("ndims", []):
        if not value.isdecimal() or not 1 <= int(value) <= 64:
            return f"its MetaImage header has NDims = {value[:20]}, not a number of dimensions"
    for value in fields.get("compresseddatasize", []):
        if not value.isdecimal() or not 0 < int(value) <= most:
            return f"its MetaImage header has CompressedDataSize = {value[:20]}, not the size of its data"
    return None


def data_shortfall(p: Path, size: Sequence[int], component_bytes: int) -> Optional[str]:
    """Why the voxel data in image file ``p`` cannot fill an image of ``size`` (x, y, z...), or None.

    ``component_bytes`` is the size of a voxel as ITK reads it (NIfTI: taken from
    the header instead, since ``scl_slope`` turns stored integers into floats).
    None also where the data cannot be measured (data split over several files,
    unknown encodings): ITK's own checks apply there.
    """
    voxels = 1
    for s in size:
        voxels *= max(0, int(s))
    suffix = image_suffix(p)
    try:
        if suffix in (".nii", ".nii.gz"):
            layout = _nifti_layout(p)
            if layout is None:
                return None
            offset, per_voxel = layout
            return _shortfall(voxels, voxels * per_voxel, _nifti_data(p, offset, voxels * per_voxel))
        if suffix in (".nrrd", ".nhdr", ".mha", ".mhd"):
            need = voxels * component_bytes
            have = (_nrrd_data if suffix in (".nrrd", ".nhdr") else _meta_data)(p, need)
            return None if have is None else _shortfall(voxels, need, have)
    except (OSError, EOFError, zlib.error, ValueError):
        return "the compressed file is truncated or corrupt"
    return None


def _shortfall(voxels: int, need: int, have: int) -> Optional[str]:
    if have >= need:
        return None
    return (f"its header describes {voxels} voxels ({need} bytes) but the file holds only {max(0, have)} bytes "
            f"of voxel data: it is truncated, or its header is wrong")


def _nifti_layout(p: Path) -> Optional[Tuple[int, int]]:
    """``(vox_offset, bytes per voxel)`` of a NIfTI-1 file, or None when ITK would not read it.

    Like ITK (which reads no NIfTI-2), whatever ``sizeof_hdr`` and the magic say:
    the byte order is the one that makes ``dim[0]`` 1 to 7 (or ``sizeof_hdr``
    348 where ``dim[0]`` is 0).
    """
    with (gzip.open(p, "rb") if image_suffix(p) == ".nii.gz" else open(p, "rb")) as f:
        hdr = f.read(348)
    if len(hdr) < 348:
        return None
    for end in "<>":
        dim0 = struct.unpack(end + "h", hdr[40:42])[0]
        if 1 <= dim0 <= 7 or (dim0 == 0 and struct.unpack(end + "i", hdr[:4])[0] == 348):
            code, offset = struct.unpack(end + "h", hdr[70:72])[0], struct.unpack(end + "f", hdr[108:112])[0]
            offset = int(offset) if math.isfinite(offset) and offset >= 352 else 352
            return (offset, _NIFTI_BYTES[code]) if code in _NIFTI_BYTES else None
    return None


def _nifti_data(p: Path, offset: int, need: int) -> int:
    """Bytes of voxel data from ``offset`` on (counted only up to ``need`` for .nii.gz)."""
    size = p.stat().st_size
    if image_suffix(p) == ".nii":
        return size - offset
    with open(p, "rb") as f:  # gzip ends with the uncompressed size mod 2**32
        f.seek(max(0, size - 4))
        isize = struct.unpack("<I", f.read(4).rjust(4, b"\0"))[0]
    if isize == (offset + need) % (1 << 32) and offset + need <= _DEFLATE_MAX_RATIO * size:
        return need
    with gzip.open(p, "rb") as g:
        return _count(g.read, offset + need) - offset


def _count(read, limit: int) -> int:
    """Bytes ``read(n)`` gives until it is exhausted or ``limit`` is reached."""
    n = 0
    while n < limit:
        chunk = read(min(1 << 22, limit - n))
        if not chunk:
            break
        n += len(chunk)
    return n


def _inflated(f: BinaryIO, limit: int, max_in: Optional[int] = None) -> int:
    """Bytes the zlib or gzip stream at ``f``'s position (its first ``max_in`` bytes) inflates to, up to ``limit``."""
    d = zlib.decompressobj(47)  # 47: either header
    n, pending, left = 0, b"", (1 << 62) if max_in is None else max_in
    while n < limit and not d.eof:
        if not pending:
            pending = f.read(min(1 << 20, left))
            left -= len(pending)
            if not pending:
                break
        n += len(d.decompress(pending, 1 << 24))
        pending = d.unconsumed_tail
    return n


def _measure(source: Path, start: int, need: int, encoding: str, max_in: Optional[int] = None) -> Optional[int]:
    """Bytes of voxel data ``source`` holds from ``start`` on, by encoding (None: cannot tell).

    ``inflate``: counted (MetaImage reads short compressed data as zeros);
    ``compressed``: NRRD, whose reader finds short data itself: only a bound,
    so that nothing absurd is allocated.
    """
    avail = (source.stat().st_size if source.is_file() else 0) - start
    if encoding == "inflate":
        with open(source, "rb") as f:
            f.seek(max(0, start))
            return _inflated(f, need, max_in)
    scale = {"raw": 1.0, "compressed": _DEFLATE_MAX_RATIO, "ascii": 4.0, "hex": 0.5}.get(encoding)
    return None if scale is None else int(avail * scale)  # ascii: a value of 8 bytes takes 2 characters or more


def _header_lines(p: Path) -> Tuple[List[bytes], int]:
    with open(p, "rb") as f:
        head = f.read(_HEAD)
    return head.split(b"\n"), len(head)


def _data_source(p: Path, name: str, start: int) -> Tuple[Optional[Path], int]:
    """The file holding the voxel data and where in it they start; (None, 0) for lists, patterns, missing files.

    A device (``/dev/zero``) counts as holding nothing.
    """
    name = name.strip()
    if name.upper() in ("", "LOCAL"):
        return p, start
    if name.upper() == "LIST" or " " in name or "%" in name:
        return None, 0
    source = Path(name) if Path(name).is_absolute() else p.parent / name
    return (source, 0) if source.exists() else (None, 0)


def _nrrd_data(p: Path, need: int) -> Optional[int]:
    lines, total = _header_lines(p)
    fields: Dict[str, str] = {}
    start = total
    pos = 0
    for ln in lines[1:] if lines else []:
        pos += len(ln) + 1
        text = ln.decode("latin-1").rstrip("\r")
        if not text:  # the blank line that ends an attached header
            start = len(lines[0]) + 1 + pos
            break
        key, sep, value = text.partition(":")
        if sep and not key.startswith("#") and not value.startswith("="):  # "key:=value" pairs are not fields
            fields.setdefault(key.strip().lower().replace(" ", ""), value.strip())
    source, start = _data_source(p, fields.get("datafile", ""), start)
    if source is None:
        return None
    skip = fields.get("byteskip", "0")
    if skip.isdecimal():
        start += int(skip)
    codec = {"raw": "raw", "gzip": "compressed", "gz": "compressed", "bzip2": "compressed", "bz2": "compressed",
             "ascii": "ascii", "text": "ascii", "txt": "ascii", "hex": "hex"}
    return _measure(source, start, need, codec.get(fields.get("encoding", "").lower(), ""))


def _meta_header(p: Path) -> Tuple[Dict[str, List[str]], int]:
    """A MetaImage header's fields (lower-case names, every value given) and where its data start."""
    lines, total = _header_lines(p)
    fields: Dict[str, List[str]] = {}
    pos = 0
    for ln in lines:
        pos += len(ln) + 1
        key, sep, value = ln.decode("latin-1").partition("=")
        if sep:
            fields.setdefault(key.strip().lower(), []).append(value.strip())
        if key.strip().lower() == "elementdatafile":
            return fields, min(pos, total)
    return fields, total


def _meta_data(p: Path, need: int) -> Optional[int]:
    fields, start = _meta_header(p)
    first = {k: v[0] for k, v in fields.items()}
    source, start = _data_source(p, first.get("elementdatafile", ""), start)
    if source is None:
        return None
    skip = first.get("headersize", "0")
    if source != p and skip.isdecimal():
        start = int(skip)
    if first.get("compresseddata", "").lower() == "true":  # CompressedDataSize: checked by header_problem
        size = first.get("compresseddatasize", "")
        max_in = int(size) if size.isdecimal() else None
        return _measure(source, start, need, "inflate", max_in)
    return _measure(source, start, need, "ascii" if first.get("binarydata", "").lower() == "false" else "raw")
