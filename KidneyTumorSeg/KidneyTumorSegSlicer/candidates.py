"""Adding back a rejected tumor candidate or removing a kept one, in the segmentation and the findings table."""
from __future__ import annotations

import json
from typing import Dict, Optional

import numpy as np
import vtk

import slicer
from slicer.i18n import tr as _

from .kidneyregion import kidneyRegion
from .labelmaps import segmentArray, setSegmentArray
from .nodes import ATTR_REPORT, REF_CANDIDATES, REF_FINDINGS, SEGMENT_KIDNEY_LEFT, SEGMENT_KIDNEY_RIGHT, SEGMENT_TUMOR, \
    segmentIds
from .results import writeFindings


def setCandidateKept(segmentation, candidateId: int, keep: bool) -> None:
    """Add (``keep``) or remove tumor candidate ``candidateId`` and update the findings table.

    The core's rule (``findings.choose_candidate``): added, the candidate's voxels (from the candidate
    map) become Kidney tumor; removed, those inside the kidney region the cascade found
    (``kidneyregion``) become the nearest kidney segment, the rest background.
    """
    from KidneyTumorSegLib.findings.findings import choose_candidate
    from KidneyTumorSegLib.findings.findings_table import kept_ids_after

    table = segmentation.GetNodeReference(REF_FINDINGS)
    candidates = segmentation.GetNodeReference(REF_CANDIDATES)
    if table is None or candidates is None:
        raise ValueError(_("This segmentation has no KidneyTumorSeg findings or candidate map."))
    report = json.loads(table.GetAttribute(ATTR_REPORT) or "{}")
    kept = kept_ids_after(report, add=[candidateId] if keep else [], remove=[] if keep else [candidateId])
    candidateMap = slicer.util.arrayFromVolume(candidates)
    mask = candidateMap == int(candidateId)
    if not mask.any():
        raise ValueError(_("Tumor candidate {id} is not in the candidate map.").format(id=candidateId))
    ids = _withTumorSegment(segmentation)
    arrays = {sid: segmentArray(segmentation, sid, candidates).astype(bool) for sid in ids.values()}
    tumorId = ids[SEGMENT_TUMOR]
    kidneyIds = [ids[k] for k in (SEGMENT_KIDNEY_LEFT, SEGMENT_KIDNEY_RIGHT) if k in ids]
    region = kidneyRegion(candidates, candidateMap, arrays.values())
    kidneys, tumor = choose_candidate({k: arrays[k] for k in kidneyIds}, arrays[tumorId], mask, keep, region,
                                      tuple(candidates.GetSpacing())[::-1])
    updates = dict(kidneys)
    updates[tumorId] = tumor
    # shrink segments before growing others, so no voxel is in two segments at any step
    for sid in sorted(updates, key=lambda s: int(updates[s].sum()) - int(arrays[s].sum())):
        setSegmentArray(updates[sid], segmentation, sid, candidates)
    renal = _nephrometry(candidates, report, candidateId, mask, updates, ids) if keep else None
    writeFindings(table, reportWithKept(report, kept, candidateId, keep, renal))


def _nephrometry(candidates, report: Dict, candidateId: int, mask, updates: Dict, ids: Dict[str, str]):
    """R.E.N.A.L. of a candidate kept by hand, against its side's kidney segment (the core's measurement)."""
    from KidneyTumorSegLib.findings.nephrometry import nephrometry_on_grid
    from KidneyTumorSegLib.geometry.slicer_geometry import volume_from_slicer

    side = next((c.get("side") for c in report.get("tumor_candidates", []) if int(c["id"]) == int(candidateId)), "")
    own = {"left": [SEGMENT_KIDNEY_LEFT], "right": [SEGMENT_KIDNEY_RIGHT]}.get(side,
                                                                            [SEGMENT_KIDNEY_LEFT, SEGMENT_KIDNEY_RIGHT])
    kidneys = [updates[ids[k]] for k in own if k in ids and ids[k] in updates]
    if not kidneys:
        return None
    ijkToRas = vtk.vtkMatrix4x4()
    candidates.GetIJKToRASMatrix(ijkToRas)
    grid = volume_from_slicer(mask, slicer.util.arrayFromVTKMatrix(ijkToRas))
    try:
        return nephrometry_on_grid(grid, np.logical_or.reduce(kidneys), mask, updates[ids[SEGMENT_TUMOR]]).to_dict()
    except ValueError:  # a kidney too small to measure against: no score rather than a wrong one
        return None


def _withTumorSegment(segmentation) -> Dict[str, str]:
    """``nodes.segmentIds`` of ``segmentation``, after adding an empty Kidney tumor segment if it has none."""
    ids = segmentIds(segmentation)
    if SEGMENT_TUMOR not in ids:
        from KidneyTumorSegLib.findings.terminology import KIDNEY_TUMOR

        segmentation.GetSegmentation().AddEmptySegment(KIDNEY_TUMOR.segment_id, KIDNEY_TUMOR.name, KIDNEY_TUMOR.color)
        segment = segmentation.GetSegmentation().GetSegment(KIDNEY_TUMOR.segment_id)
        segment.SetTag(segment.GetTerminologyEntryTagName(), KIDNEY_TUMOR.terminology_string())
        ids = segmentIds(segmentation)
    return ids


def reportWithKept(report: Dict, kept, candidateId: int, keep: bool, nephrometry: Optional[Dict] = None) -> Dict:
    """``report`` with candidates ``kept`` kept (and the rest rejected), totals updated, the edit recorded;
    ``nephrometry``: the R.E.N.A.L. of candidate ``candidateId`` when it was kept by this edit."""
    report = json.loads(json.dumps(report))
    for candidate in report.get("tumor_candidates", []):
        candidate["kept"] = int(candidate["id"]) in kept
        if keep and int(candidate["id"]) == int(candidateId) and nephrometry is not None:
            candidate["nephrometry"] = nephrometry
    keptCandidates = [c for c in report.get("tumor_candidates", []) if c["kept"]]
    report["kept_tumors"] = len(keptCandidates)
    report["total_tumor_volume_ml"] = round(sum(c["volume_ml"] for c in keptCandidates), 3)
    report.setdefault("manual_changes", []).append({"candidate": int(candidateId), "kept": bool(keep)})
    return report
