"""DICOM Segmentation (SEG) output: a case's segments as one SEG instance that references its source series.

``write_dicom_seg`` turns a segment map on the grid of a DICOM series (1 kidney left, 2 kidney right,
3 kidney tumor: the values and SNOMED CT codes of the ``.seg.nrrd``, ``findings.terminology``) into a
binary DICOM SEG with ``highdicom``: one frame per segment and source slice that has voxels of it,
each frame naming its source instance (Derivation Image / Source Image Sequence) and carrying that
slice's Image Position (Patient); the SEG shares the series' study, patient and frame of reference.
Each segment names the algorithm (model name, version and the SHA-256 of the bundle's manifest, which
lists the SHA-256 of every weight file) in its Algorithm Identification Sequence.

The source files are read for their headers only (no pixel data is decoded, so compressed transfer
syntaxes need no decoder) and never written. A series anonymised down to empty UIDs (some public test
data is) is repaired in memory: SOP Class / Instance UID from the file meta information (the same
values by definition); an empty Study or Series Instance UID is replaced by one derived from the
frame of reference, the same on every run, with a warning that PACS cannot link the SEG to the study.

``highdicom`` (and ``pydicom``) are the optional extra ``kidneytumorseg[dicom]``.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Sequence, Tuple

import numpy as np

from ..findings.terminology import SEG_NRRD_SEGMENTS, Code, SegmentDefinition
from ..geometry.volume import InputError, Volume
from .atomic import atomic_write
from .dicom_write import save_dicom

log = logging.getLogger(__name__)

SERIES_NUMBER = 9901  # the SEG's series number: after any scanner series
SERIES_DESCRIPTION = "KidneyTumorSeg kidneys and tumors"
MANUFACTURER = "KidneyTumorSeg"
# how far (mm) a slice's Image Position (Patient) may lie from the segmentation grid's slice
POSITION_TOLERANCE_MM = 0.05
INSTALL_HINT = "pip install 'kidneytumorseg[dicom]'"


@dataclass(frozen=True)
class Algorithm:
    """What made the segmentation: the model's name and version, the bundle's SHA-256, our version."""

    name: str
    version: str
    sha256: str
    software_version: str
    edited: bool = False  # a person could correct it (Slicer): SEMIAUTOMATIC segments, else AUTOMATIC


def require_highdicom() -> None:
    """Raise ``InputError`` naming the install command when highdicom or pydicom is missing."""
    import importlib

    try:
        for name in ("highdicom", "pydicom"):
            importlib.import_module(name)
    except ImportError as exc:
        raise InputError(f"DICOM SEG output needs highdicom and pydicom ({exc}): {INSTALL_HINT}") from None


def write_dicom_seg(label: Volume, files: Sequence[os.PathLike], path: os.PathLike, algorithm: Algorithm,
                    segments: Mapping[int, SegmentDefinition] = SEG_NRRD_SEGMENTS,
                    overwrite: bool = False) -> Path:
    """Write ``label`` (segment values on the series' grid, ``[k, j, i]`` = slice ``files[k]``, row ``j``,
    column ``i``) as a DICOM SEG at ``path``, atomically; ``files``: the series' files in slice order."""
    require_highdicom()
    datasets = source_datasets(files)
    check_grid(label, datasets)
    seg = build_seg(label, datasets, algorithm, segments)
    return atomic_write(path, lambda tmp: save_dicom(seg, tmp), overwrite=overwrite)


def source_datasets(files: Sequence[os.PathLike]) -> List["object"]:
    """The series' headers (pydicom datasets, no pixel data), repaired in memory where UIDs are empty."""
    import pydicom

    datasets = []
    for f in files:
        try:
            datasets.append(pydicom.dcmread(str(f), stop_before_pixels=True))
        except Exception as exc:  # pydicom raises many kinds on a damaged file
            raise InputError(f"cannot read '{f}' as DICOM for the SEG's references: {exc}") from None
    _repair_uids(datasets)
    return datasets


def _repair_uids(datasets) -> None:
    """SOP UIDs from the file meta; empty study / series UIDs derived from the frame of reference."""
    from pydicom.uid import generate_uid

    for ds in datasets:
        meta = getattr(ds, "file_meta", None)
        for attr, meta_attr in (("SOPClassUID", "MediaStorageSOPClassUID"),
                                ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not str(ds.get(attr, "") or "") and meta is not None and str(meta.get(meta_attr, "") or ""):
                setattr(ds, attr, str(meta.get(meta_attr)))
        if not str(ds.get("SOPInstanceUID", "") or ""):
            raise InputError("a file of the DICOM series has no SOP Instance UID: the SEG cannot reference it")
    frame = str(datasets[0].get("FrameOfReferenceUID", "") or "")
    for attr in ("StudyInstanceUID", "SeriesInstanceUID"):
        if any(not str(ds.get(attr, "") or "") for ds in datasets):
            if not frame:
                raise InputError(f"the DICOM series has no {attr} and no Frame of Reference UID: the SEG "
                                 "cannot reference it")
            uid = generate_uid(entropy_srcs=[attr, frame])
            log.warning("the DICOM series has no %s (anonymised?): the SEG uses %s, derived from its frame of "
                        "reference; a PACS cannot link the SEG to the source's study", attr, uid)
            for ds in datasets:
                setattr(ds, attr, uid)


def check_grid(label: Volume, datasets) -> None:
    """Raise ``ValueError`` unless ``label``'s grid is the series' (slice count, rows, columns, positions)."""
    k, rows, cols = label.shape
    if len(datasets) != k:
        raise ValueError(f"the segmentation has {k} slices, the DICOM series {len(datasets)} files")
    for n, ds in enumerate(datasets):
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise ValueError(f"slice {n} of the DICOM series is {ds.Rows}x{ds.Columns}, the segmentation "
                             f"{rows}x{cols}")
        expected = label.index_to_world(np.array([0.0, 0.0, float(n)]))
        got = np.array([float(v) for v in ds.ImagePositionPatient])
        if np.abs(got - expected).max() > POSITION_TOLERANCE_MM:
            raise ValueError(f"slice {n} of the DICOM series lies at {np.round(got, 2).tolist()} mm, the "
                             f"segmentation's slice {n} at {np.round(expected, 2).tolist()} mm: not the same grid")


def build_seg(label: Volume, datasets, algorithm: Algorithm, segments: Mapping[int, SegmentDefinition]):
    """The ``highdicom.seg.Segmentation`` of ``label`` over ``datasets`` (checked by :func:`check_grid`)."""
    import highdicom as hd

    values = sorted(int(v) for v in segments)
    if values != list(range(1, len(values) + 1)):
        raise ValueError(f"DICOM SEG segment numbers must be 1..N, got {values}")
    arr = np.asarray(label.array)
    unknown = sorted(set(np.unique(arr[arr > 0]).tolist()) - set(values)) if arr.any() else []
    if unknown:
        raise ValueError(f"label values {unknown} have no segment definition")
    descriptions = [segment_description(v, segments[v], algorithm) for v in values]
    with warnings.catch_warnings():
        # single-component patient names of anonymised data are copied as they are
        warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
        return hd.seg.Segmentation(
            source_images=datasets, pixel_array=arr.astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
            series_instance_uid=hd.UID(), series_number=SERIES_NUMBER, sop_instance_uid=hd.UID(),
            instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name=algorithm.name[:64],
            software_versions=algorithm.software_version, device_serial_number=algorithm.sha256[:16],
            series_description=SERIES_DESCRIPTION, omit_empty_frames=bool(arr.any()))


def segment_description(number: int, definition: SegmentDefinition, algorithm: Algorithm):
    """A segment's description: label, SNOMED CT category, type (with laterality), region, algorithm."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    ident = hd.AlgorithmIdentificationSequence(
        name=f"KidneyTumorSeg {algorithm.name}"[:64], family=codes.cid7162.ArtificialIntelligence,
        version=algorithm.version[:64], source=MANUFACTURER, parameters={"bundle_sha256": algorithm.sha256})
    region = [coded(definition.anatomic_region)] if definition.anatomic_region else None
    kind = hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC if algorithm.edited else \
        hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    desc = hd.seg.SegmentDescription(
        segment_number=number, segment_label=definition.name, segmented_property_category=coded(definition.category),
        segmented_property_type=coded(definition.type), algorithm_type=kind,
        algorithm_identification=ident, anatomic_regions=region, tracking_id=definition.segment_id,
        tracking_uid=hd.UID())
    if definition.type_modifier:
        # laterality: a modifier of the property type, inside its code item (DICOM PS3.3 C.8.20.4)
        desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            coded(definition.type_modifier)]
    return desc


def coded(code: Code):
    """Our ``(scheme, value, meaning)`` as highdicom's ``CodedConcept``."""
    from highdicom.sr import CodedConcept

    scheme, value, meaning = code
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def series_files(image: Volume) -> Tuple[str, ...]:
    """The DICOM files ``image`` was read from, in slice order; ``InputError`` when it was not a series."""
    files = tuple(image.meta.get("dicom_paths") or ())
    if image.meta.get("format") != "dicom" or not files:
        source = image.meta.get("source", "the input")
        raise InputError(f"DICOM SEG output needs a DICOM series as input; '{source}' was read as "
                         f"{image.meta.get('format', 'an image')}, not as a DICOM series")
    return files


def algorithm(report: Mapping[str, object]) -> Algorithm:
    """The :class:`Algorithm` of a case's report (its ``model``, ``model_version`` and ``model_sha256``; "unknown"
    where a report has none, e.g. one written before they were recorded)."""
    from .. import __version__

    return Algorithm(str(report.get("model") or "unknown"), str(report.get("model_version") or "unknown"),
                     str(report.get("model_sha256") or "unknown"), __version__)


def files_in_slice_order(grid: Volume, files: Sequence[os.PathLike]) -> List[str]:
    """The files of a series in ``grid``'s slice order (file ``n`` at slice ``n``), from each file's Image Position
    (Patient); ``ValueError`` when a file lies off the grid's slices or two lie on one (e.g. a volume loaded in
    Slicer from a DICOM series, with its instance UIDs)."""
    import pydicom

    by_slice = {}
    for f in files:
        ds = pydicom.dcmread(str(f), stop_before_pixels=True, specific_tags=["ImagePositionPatient"])
        position = np.array([float(v) for v in ds.ImagePositionPatient])
        k = int(round(float(grid.world_to_index(position)[2])))
        expected = grid.index_to_world(np.array([0.0, 0.0, float(k)]))
        if not 0 <= k < grid.shape[0] or np.abs(position - expected).max() > POSITION_TOLERANCE_MM or k in by_slice:
            raise ValueError(f"'{f}' lies at {np.round(position, 2).tolist()} mm, not on a free slice of the volume's "
                             "grid: the volume is not that series")
        by_slice[k] = str(f)
    if len(by_slice) != grid.shape[0]:
        raise ValueError(f"the volume has {grid.shape[0]} slices, its DICOM series {len(by_slice)} files")
    return [by_slice[k] for k in range(grid.shape[0])]
