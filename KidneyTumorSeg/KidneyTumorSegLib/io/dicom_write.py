"""A CT volume written as a DICOM series (CT Image Storage, one file per slice), with pydicom.

For phantoms (``kidneytumorseg phantom --dicom``): a demo CT that goes the way a scan from PACS goes
(DICOM series in, DICOM SEG out), and the tests of the DICOM SEG output. The slices are signed 16-bit
HU (rescale slope 1, intercept 0) on the volume's grid: Image Orientation (Patient) from the first two
direction columns, Image Position (Patient) of each slice from the grid, Pixel Spacing as row, column
spacing. The folder is written as a whole (staged beside it, then renamed) and replaced, as a whole, only with
``overwrite``.
"""
from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..geometry.volume import Volume
from .atomic import exists_message

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
HU_RANGE = (-1024, 3071)


def write_dicom_series(image: Volume, folder: os.PathLike, patient_id: str = "PHANTOM",
                       series_description: str = "KidneyTumorSeg phantom CT", study_uid: Optional[str] = None,
                       overwrite: bool = False) -> List[Path]:
    """Write ``image`` (HU, ``[k, j, i]``) as ``folder/slice_NNNN.dcm``, one file per slice; returns them."""
    from pydicom.uid import generate_uid

    target = Path(folder)
    if target.exists() and not overwrite:
        raise FileExistsError(exists_message(target))
    if image.array.ndim != 3 or not np.all(np.isfinite(image.array)):
        raise ValueError("a DICOM series needs a finite 3D volume")
    if np.linalg.det(image.direction_matrix) < 0:
        raise ValueError("a DICOM series needs a right-handed grid (slices along row x column)")
    hu = np.clip(np.rint(image.array), *HU_RANGE).astype(np.int16)
    uids = {"study": study_uid or generate_uid(), "series": generate_uid(), "frame": generate_uid()}
    names = [f"slice_{k:04d}.dcm" for k in range(hu.shape[0])]
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-dicom-{target.name}-", dir=str(target.parent)))
    try:
        for k, name in enumerate(names):
            save_dicom(_slice_dataset(image, hu[k], k, uids, patient_id, series_description), staging / name)
        _replace_folder(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [Path(folder) / n for n in names]


def _replace_folder(staging: Path, target: Path) -> None:
    """Move the complete ``staging`` folder onto ``target`` (an old ``target`` goes as a whole, never merged)."""
    old = None
    if target.exists():
        old = target.parent / f"{staging.name}-old"
        os.rename(target, old)
    os.rename(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _slice_dataset(image: Volume, pixels: np.ndarray, k: int, uids, patient_id: str, description: str):
    """One slice's dataset: patient, study, series, frame of reference, plane and pixel attributes."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    today = datetime.date.today().strftime("%Y%m%d")
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Manufacturer, ds.ImageType = "CT", "KidneyTumorSeg phantom", ["DERIVED", "SECONDARY", "AXIAL"]
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = f"{patient_id}^", patient_id, "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uids["study"], uids["series"], uids["frame"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "000000"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
    ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = 1, k + 1, description
    d = image.direction_matrix
    ds.ImageOrientationPatient = [_ds(v) for v in (*d[:, 0], *d[:, 1])]
    ds.ImagePositionPatient = [_ds(v) for v in image.index_to_world(np.array([0.0, 0.0, float(k)]))]
    sx, sy, sz = image.spacing
    ds.PixelSpacing, ds.SliceThickness = [_ds(sy), _ds(sx)], _ds(sz)
    ds.PositionReferenceIndicator = ""
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
    ds.KVP = ""
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return ds


def _ds(v: float) -> str:
    """A decimal string (DICOM DS: at most 16 characters)."""
    return f"{float(v):.10g}"[:16]


def save_dicom(ds, path: os.PathLike) -> None:
    """Write ``ds`` as a DICOM file (preamble and file meta): pydicom 3, and pydicom 2 (Python 3.9)."""
    import pydicom

    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(str(path), enforce_file_format=True)
    else:  # pragma: no cover - pydicom 2, Slicer 5.8's Python 3.9
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(str(path), write_like_original=False)
