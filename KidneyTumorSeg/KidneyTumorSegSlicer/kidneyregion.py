"""The kidney region the cascade found, kept with a loaded result for the candidate edits.

A rejected candidate's voxels become kidney only inside the kidney region the cascade found, and
background elsewhere (the core's ``findings.choose_candidate``). That region is ``sides > 0`` of the
cascade, which is the run's label map > 0: the cascade writes both from the same mask (each kidney
with its kept tumors), so the label file the run already writes gives it exactly. It is read when
the run is loaded, before any edit, because the segments stop showing it once candidates are edited:
a candidate outside the kidney that the user adds back lies in the tumor segment, and removing it
again must leave it outside. Only the candidates' voxels matter to an edit, so only their share is
kept: one bit per candidate voxel (in the candidate map's array order), compressed, in an attribute
of the candidate map node, which is saved with the scene.
"""
from __future__ import annotations

import base64
import zlib
from typing import Iterable, Optional

import numpy as np

from .nodes import ATTR_KIDNEY_REGION


def packRegion(candidateMap, region) -> str:
    """``region`` (boolean, the candidate map's grid) at the candidates' voxels, as text."""
    bits = np.asarray(region, bool)[np.asarray(candidateMap) > 0]
    return f"{bits.size}:" + base64.b64encode(zlib.compress(np.packbits(bits).tobytes(), 9)).decode("ascii")


def unpackRegion(candidateMap, text: str) -> Optional[np.ndarray]:
    """The region :func:`packRegion` wrote (False away from the candidates), or None when ``text`` does not fit
    ``candidateMap``."""
    candidateMap = np.asarray(candidateMap)
    try:
        count, data = text.split(":", 1)
        bits = np.unpackbits(np.frombuffer(zlib.decompress(base64.b64decode(data)), np.uint8))[:int(count)]
    except (ValueError, zlib.error):
        return None
    where = candidateMap > 0
    if bits.size != int(where.sum()):
        return None
    region = np.zeros(candidateMap.shape, bool)
    region[where] = bits.astype(bool)
    return region


def storeKidneyRegion(candidatesNode, candidateMap, labelPath: str) -> None:
    """Keep the kidney region of the run's label file (``labelPath``, the candidate map's grid) with
    ``candidatesNode`` (its voxels ``candidateMap``)."""
    import SimpleITK as sitk

    label = sitk.GetArrayFromImage(sitk.ReadImage(str(labelPath)))
    if label.shape != np.asarray(candidateMap).shape:
        raise ValueError(f"the label map {labelPath} and the candidate map have different grids")
    candidatesNode.SetAttribute(ATTR_KIDNEY_REGION, packRegion(candidateMap, label > 0))


def kidneyRegion(candidatesNode, candidateMap, segmentArrays: Iterable) -> np.ndarray:
    """The kidney region kept with ``candidatesNode`` (voxels ``candidateMap``); for a result loaded before
    it was kept, the union of the result's segments now (``segmentArrays``, on the candidate map's grid)."""
    text = candidatesNode.GetAttribute(ATTR_KIDNEY_REGION)
    region = unpackRegion(candidateMap, text) if text else None
    if region is None:
        region = np.zeros(np.asarray(candidateMap).shape, bool)
        for array in segmentArrays:
            region |= np.asarray(array, bool)
    return region
