"""A result as a DICOM SEG for PACS: the core's writer (``io.dicom_seg``, the same as ``segment --dicom-seg``) over
the CT's source series in Slicer's DICOM database.

Slicer's own route, the DICOM module's export with the QuantitativeReporting extension's DICOM SEG plugin
(dcmqi), needs that extension; this one needs highdicom (installed through pip when asked, as the core's
other packages) and a CT loaded from the DICOM database: its ``DICOM.instanceUIDs`` attribute names the
source instances, and the database their files. The segments are read as the annotator left them
(Kidney left, Kidney right, Kidney tumor on the CT's grid), so the SEG carries the corrections.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import List

import numpy as np
import vtk

import slicer
from slicer.i18n import tr as _

from .labelmaps import segmentArray
from .nodes import ATTR_REPORT, REF_FINDINGS, SEGMENT_KIDNEY_LEFT, SEGMENT_KIDNEY_RIGHT, SEGMENT_TUMOR, segmentIds

INSTANCE_UIDS = "DICOM.instanceUIDs"


def sourceFiles(volumeNode, database) -> List[str]:
    """The files of ``volumeNode``'s source instances; ``ValueError`` when it was not loaded from DICOM."""
    uids = (volumeNode.GetAttribute(INSTANCE_UIDS) or "").split()
    if not uids:
        raise ValueError(_("{name} was not loaded from Slicer's DICOM database: a DICOM SEG needs its source "
                           "series.").format(name=volumeNode.GetName()))
    files = [database.fileForInstance(uid) for uid in uids]
    missing = [uid for uid, f in zip(uids, files) if not f or not Path(f).is_file()]
    if missing:
        raise ValueError(_("{n} source file(s) of {name} are not in the DICOM database (first: {uid}).").format(
            n=len(missing), name=volumeNode.GetName(), uid=missing[0]))
    return files


def segmentMap(segmentation, volumeNode) -> np.ndarray:
    """The segments as values (1 kidney left, 2 right, 3 tumor; ``findings.terminology``) on the CT's grid."""
    from KidneyTumorSegLib.findings.terminology import SEG_KIDNEY_LEFT, SEG_KIDNEY_RIGHT, SEG_TUMOR

    ids = segmentIds(segmentation)
    values = ((SEGMENT_KIDNEY_LEFT, SEG_KIDNEY_LEFT), (SEGMENT_KIDNEY_RIGHT, SEG_KIDNEY_RIGHT), (SEGMENT_TUMOR, SEG_TUMOR))
    out = None
    for ours, value in values:
        if ours in ids:
            mask = segmentArray(segmentation, ids[ours], volumeNode).astype(bool)
            out = np.zeros(mask.shape, np.uint8) if out is None else out
            out[mask] = value
    if out is None or not out.any():
        raise ValueError(_("The segmentation has no kidney or tumor voxels to export."))
    return out


def segmentGrid(segmentation, volumeNode):
    """:func:`segmentMap` as a core ``Volume`` (LPS geometry of the CT), for the core's writers."""
    from KidneyTumorSegLib.geometry.slicer_geometry import volume_from_slicer

    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    return volume_from_slicer(segmentMap(segmentation, volumeNode), slicer.util.arrayFromVTKMatrix(ijkToRas))


def resultReport(segmentation) -> dict:
    """The core's report of the run that made ``segmentation`` ({} for a segmentation of another origin)."""
    table = segmentation.GetNodeReference(REF_FINDINGS)
    return json.loads(table.GetAttribute(ATTR_REPORT) or "{}") if table is not None else {}


def exportDicomSeg(segmentation, volumeNode, path, database=None, overwrite: bool = False) -> Path:
    """Write ``segmentation`` (a KidneyTumorSeg result, edited or not) as a DICOM SEG at ``path``, referencing
    ``volumeNode``'s source series; the algorithm is the model named in the result's report."""
    files = sourceFiles(volumeNode, database if database is not None else slicer.dicomDatabase)
    return exportDicomSegFromFiles(segmentation, volumeNode, files, path, overwrite)


def exportDicomSegFromFiles(segmentation, volumeNode, files, path, overwrite: bool = False) -> Path:
    """:func:`exportDicomSeg` with the source series' ``files`` given (any order)."""
    from KidneyTumorSegLib.io.dicom_seg import algorithm, files_in_slice_order, write_dicom_seg

    grid = segmentGrid(segmentation, volumeNode)
    made = dataclasses.replace(algorithm(resultReport(segmentation)), edited=True)  # reviewed: SEMIAUTOMATIC
    return write_dicom_seg(grid, files_in_slice_order(grid, files), path, made, overwrite=overwrite)
