"""Reading a DICOM SEG back with pydicom alone (test_dicom_seg, test_cli_dicom, test_slicer_dicomexport_mrml)."""
from __future__ import annotations

import numpy as np
import pydicom


def source_of(files):
    """(SOP Instance UIDs, Image Positions, first header) of a series' files in slice order, as pydicom reads them
    (an empty SOP Instance UID taken from the file meta, as the writer does)."""
    heads = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    uids = [str(h.get("SOPInstanceUID") or h.file_meta.MediaStorageSOPInstanceUID) for h in heads]
    return uids, [np.array([float(v) for v in h.ImagePositionPatient]) for h in heads], heads[0]


def seg_voxels(path, files, shape):
    """(segment map on the series' grid, SEG dataset), frame by frame: each frame goes to the slice its Source
    Image Sequence names, and its Image Position (Patient) must be that slice's."""
    ds = pydicom.dcmread(str(path))
    uids, positions, _ = source_of(files)
    frames = ds.pixel_array.reshape(-1, shape[1], shape[2])
    out = np.zeros(shape, np.uint8)
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        k = uids.index(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        np.testing.assert_allclose([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
                                   positions[k], atol=1e-3)
        out[k][frames[f] > 0] = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
    return out, ds
