"""Adding back a rejected tumor candidate or removing a kept one, in the segmentation and the findings table."""
from __future__ import annotations

import json
from typing import Dict, Sequence

import slicer
from slicer.i18n import tr as _

from .labelmaps import segmentArray, setSegmentArray
from .nodes import ATTR_REPORT, REF_CANDIDATES, REF_FINDINGS, SEGMENT_KIDNEY_LEFT, SEGMENT_KIDNEY_RIGHT, SEGMENT_TUMOR, \
    segmentIds
from .results import writeFindings


def setCandidateKept(segmentation, candidateId: int, keep: bool) -> None:
    """Add (``keep``) or remove tumor candidate ``candidateId`` and update the findings table.

    Added: the candidate's voxels (from the candidate map) become Kidney tumor. Removed:
    they become the nearest kidney segment, since the kidney stage segments kidney and
    tumor together as one foreground.
    """
    from KidneyTumorSegLib.findings_table import kept_ids_after

    table = segmentation.GetNodeReference(REF_FINDINGS)
    candidates = segmentation.GetNodeReference(REF_CANDIDATES)
    if table is None or candidates is None:
        raise ValueError(_("This segmentation has no KidneyTumorSeg findings or candidate map."))
    report = json.loads(table.GetAttribute(ATTR_REPORT) or "{}")
    kept = kept_ids_after(report, add=[candidateId] if keep else [], remove=[] if keep else [candidateId])
    mask = slicer.util.arrayFromVolume(candidates) == int(candidateId)
    if not mask.any():
        raise ValueError(_("Tumor candidate {id} is not in the candidate map.").format(id=candidateId))
    ids = segmentIds(segmentation)
    if SEGMENT_TUMOR not in ids:
        from KidneyTumorSegLib.terminology import KIDNEY_TUMOR

        segmentation.GetSegmentation().AddEmptySegment(KIDNEY_TUMOR.segment_id, KIDNEY_TUMOR.name, KIDNEY_TUMOR.color)
        segment = segmentation.GetSegmentation().GetSegment(KIDNEY_TUMOR.segment_id)
        segment.SetTag(segment.GetTerminologyEntryTagName(), KIDNEY_TUMOR.terminology_string())
        ids = segmentIds(segmentation)
    arrays = {sid: segmentArray(segmentation, sid, candidates).astype(bool) for sid in ids.values()}
    tumorId = ids[SEGMENT_TUMOR]
    kidneyIds = [ids[k] for k in (SEGMENT_KIDNEY_LEFT, SEGMENT_KIDNEY_RIGHT) if k in ids]
    spacingKji = tuple(candidates.GetSpacing())[::-1]
    updates = candidateUpdates(arrays, mask, keep, tumorId, kidneyIds, spacingKji)
    # shrink segments before growing others, so no voxel is in two segments at any step
    for sid in sorted(updates, key=lambda s: int(updates[s].sum()) - int(arrays[s].sum())):
        setSegmentArray(updates[sid], segmentation, sid, candidates)
    writeFindings(table, reportWithKept(report, kept, candidateId, keep))


def candidateUpdates(arrays: Dict, mask, keep: bool, tumorId: str, kidneyIds: Sequence[str],
                     spacingKji: Sequence[float]) -> Dict:
    """New binary arrays [k, j, i] of the segments that change when candidate ``mask`` is added or removed.

    Added: the mask joins the tumor and leaves the kidneys. Removed: it leaves the tumor and
    joins the nearest kidney (``spacingKji``: voxel size in mm, array order).
    """
    if keep:
        updates = {k: arrays[k] & ~mask for k in kidneyIds}
        updates[tumorId] = arrays[tumorId] | mask
    else:
        updates = assignToNearestKidney(mask, {k: arrays[k] for k in kidneyIds}, spacingKji)
        updates[tumorId] = arrays[tumorId] & ~mask
    return updates


def reportWithKept(report: Dict, kept, candidateId: int, keep: bool) -> Dict:
    """``report`` with candidates ``kept`` kept (and the rest rejected), totals updated, the edit recorded."""
    report = json.loads(json.dumps(report))
    for candidate in report.get("tumor_candidates", []):
        candidate["kept"] = int(candidate["id"]) in kept
    keptCandidates = [c for c in report.get("tumor_candidates", []) if c["kept"]]
    report["kept_tumors"] = len(keptCandidates)
    report["total_tumor_volume_ml"] = round(sum(c["volume_ml"] for c in keptCandidates), 3)
    report.setdefault("manual_changes", []).append({"candidate": int(candidateId), "kept": bool(keep)})
    return report


def assignToNearestKidney(mask, kidneys: Dict, spacingKji: Sequence[float], margin: int = 16) -> Dict:
    """Kidney arrays with every ``mask`` voxel added to the nearest kidney segment (array [k, j, i], spacing mm).

    The distance transform runs on the mask's box plus ``margin`` voxels (a whole CT would need
    gigabytes for the nearest-voxel indices), and on the whole array only if no kidney is that near.
    """
    import numpy as np
    from scipy import ndimage

    if not kidneys:
        return {}
    order = list(kidneys)
    labels = np.zeros(mask.shape, np.uint8)
    for n, sid in enumerate(order, start=1):
        labels[kidneys[sid] & ~mask] = n
    if not labels.any():
        return {order[0]: kidneys[order[0]] | mask}
    where = np.nonzero(mask)
    box = tuple(slice(max(int(w.min()) - margin, 0), int(w.max()) + margin + 1) for w in where)
    if not labels[box].any():
        box = tuple(slice(0, n) for n in mask.shape)
    sub = labels[box]
    nearest = ndimage.distance_transform_edt(sub == 0, sampling=spacingKji, return_distances=False, return_indices=True)
    nearestLabel = np.zeros(mask.shape, np.uint8)
    nearestLabel[box] = sub[tuple(nearest)]
    return {sid: kidneys[sid] | (mask & (nearestLabel == n)) for n, sid in enumerate(order, start=1)}
