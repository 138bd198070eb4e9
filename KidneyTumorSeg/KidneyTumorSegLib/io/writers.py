"""Output files: label map NIfTI, Slicer .seg.nrrd, JSON and CSV reports.

Every writer is atomic and refuses to replace an existing file unless
``overwrite=True`` (see ``atomic.py``): ``FileExistsError("output exists:
<path> (use --overwrite to replace it)")``.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_write, atomic_write_text
from .jsonfile import jsonable
from ..findings.terminology import SegmentDefinition
from ..geometry.volume import Volume
from .volume_io import volume_to_sitk

PathLike = Union[str, Path]


def _as_uint8_labels(label: Volume) -> np.ndarray:
    arr = label.array
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
        raise ValueError("label map has non-integer values")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"label values must be within 0..255, got {arr.min()}..{arr.max()}")
    return arr.astype(np.uint8)


def write_labelmap(label: Volume, path: PathLike, overwrite: bool = False) -> Path:
    """Write a label map (e.g. KiTS 0 background, 1 kidney, 2 tumor) as uint8, compressed.

    The format follows the suffix (NIfTI ``.nii.gz`` intended; ``.nrrd`` and
    ``.mha`` work too); voxels ``[k, j, i]`` and LPS geometry are ``label``'s.
    """
    img = volume_to_sitk(label.with_array(_as_uint8_labels(label)))
    return atomic_write(path, lambda tmp: sitk.WriteImage(img, tmp, useCompression=True), overwrite=overwrite)


def ijk_to_lps(vol: Volume) -> np.ndarray:
    """4x4 matrix from voxel index ``(i, j, k, 1)`` to LPS mm: ``[direction * spacing | origin]``."""
    m = np.eye(4)
    m[:3, :3] = vol.direction_matrix * np.asarray(vol.spacing)[np.newaxis, :]
    m[:3, 3] = vol.origin
    return m + 0.0  # no "-0" in the written header


def write_seg_nrrd(
    label: Volume,
    path: PathLike,
    segments: Mapping[int, SegmentDefinition],
    overwrite: bool = False,
    compression_level: int = 1,
) -> Path:
    """Write a 3D Slicer segmentation (``.seg.nrrd``) from a label map.

    ``segments`` maps label values to definitions, e.g.
    ``terminology.SEG_NRRD_SEGMENTS`` (1 kidney left, 2 kidney right,
    3 kidney tumor). Each becomes a segment with that label value in one
    layer, with name, colour and terminology; segments with no voxels are kept
    (empty). Label values present in the map but not in ``segments`` raise
    ``ValueError``. Voxels are stored ``(i, j, k)`` with ``space directions``
    and ``space origin`` from ``label``'s geometry in LPS, so Slicer and
    ``slicerio.read_segmentation`` put them where the CT is.
    """
    import slicerio  # here, not at import time: only this writer needs it

    labels = _as_uint8_labels(label)
    known = {int(v) for v in segments}
    top = int(labels.max()) if labels.size else 0
    # One comparison per candidate value: np.unique / bincount on a full CT grid take seconds.
    unknown = [v for v in range(1, top + 1) if v not in known and np.any(labels == v)]
    if unknown:
        raise ValueError(f"label values {unknown} have no segment definition")
    if any(not 0 < int(v) <= 255 for v in segments):
        raise ValueError("segment label values must be within 1..255")
    seg = {
        # slicerio's default index order is Fortran-like (i, j, k); ours is [k, j, i].
        # The transposed view is Fortran-contiguous, so pynrrd writes it without a copy.
        "voxels": labels.transpose(2, 1, 0),
        "ijkToLPS": ijk_to_lps(label),
        "encoding": "gzip",
        "masterRepresentation": "Binary labelmap",
        "containedRepresentationNames": ["Binary labelmap"],
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": [definition.slicerio_segment(int(value)) for value, definition in sorted(segments.items())],
    }
    return atomic_write(
        path,
        lambda tmp: slicerio.write_segmentation(tmp, seg, compression_level=compression_level),
        overwrite=overwrite,
    )


def write_csv(
    rows: Sequence[Mapping[str, Any]],
    path: PathLike,
    overwrite: bool = False,
    fieldnames: Optional[Iterable[str]] = None,
) -> Path:
    """Write ``rows`` as CSV with a header; columns are ``fieldnames`` or the keys in first-seen order.

    Missing values and NaN are written as empty cells.
    """
    if fieldnames is None:
        names: List[str] = []
        for row in rows:
            names.extend(k for k in row if k not in names)
    else:
        names = list(fieldnames)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=names, extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(v) for k, v in row.items()})
    return atomic_write_text(path, buf.getvalue(), overwrite=overwrite)


def _csv_cell(v: Any) -> Any:
    v = jsonable(v)
    if v is None:
        return ""
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return v
