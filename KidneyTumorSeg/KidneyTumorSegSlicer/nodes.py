"""Node references, attributes and segment ids that tie a result together (saved with the scene)."""
from __future__ import annotations

from typing import Dict

import slicer
from KidneyTumorSegLib.findings.terminology import KIDNEY_LEFT, KIDNEY_RIGHT, KIDNEY_TUMOR

REF_INPUT = "KidneyTumorSeg.Input"
REF_FINDINGS = "KidneyTumorSeg.Findings"
REF_CANDIDATES = "KidneyTumorSeg.Candidates"
ATTR_REPORT = "KidneyTumorSeg.Report"
# on the candidate map: the kidney region at its voxels (kidneyregion.py)
ATTR_KIDNEY_REGION = "KidneyTumorSeg.KidneyRegion"

# segment ids written by the core (terminology.SEG_NRRD_SEGMENTS)
SEGMENT_KIDNEY_LEFT = KIDNEY_LEFT.segment_id
SEGMENT_KIDNEY_RIGHT = KIDNEY_RIGHT.segment_id
SEGMENT_TUMOR = KIDNEY_TUMOR.segment_id


def segmentIds(segmentation) -> Dict[str, str]:
    """Segment ids by the core's ids (falling back to the segment names for renamed ids)."""
    from KidneyTumorSegLib.findings.terminology import SEG_NRRD_SEGMENTS

    seg = segmentation.GetSegmentation()
    ids = {}
    for definition in SEG_NRRD_SEGMENTS.values():
        if seg.GetSegment(definition.segment_id) is not None:
            ids[definition.segment_id] = definition.segment_id
        else:
            byName = seg.GetSegmentIdBySegmentName(definition.name)
            if byName:
                ids[definition.segment_id] = byName
    return ids


def replaceSegments(target, source) -> None:
    """Make ``target``'s segments those of ``source`` (ids, names, colours and terminology kept)."""
    segmentation = target.GetSegmentation()
    wasModifying = target.StartModify()
    segmentation.RemoveAllSegments()
    sourceSegmentation = source.GetSegmentation()
    for index in range(sourceSegmentation.GetNumberOfSegments()):
        segmentation.CopySegmentFromSegmentation(sourceSegmentation, sourceSegmentation.GetNthSegmentID(index))
    target.EndModify(wasModifying)


def removeNodeWithDependents(node) -> None:
    """Remove ``node`` with its display and storage nodes (no-op for None)."""
    if node is None or node.GetScene() is None:
        return
    dependents = []
    if hasattr(node, "GetNumberOfDisplayNodes"):
        dependents += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if hasattr(node, "GetStorageNode"):
        dependents.append(node.GetStorageNode())
    slicer.mrmlScene.RemoveNode(node)
    for dependent in dependents:
        if dependent is not None and dependent.GetScene() is not None:
            slicer.mrmlScene.RemoveNode(dependent)


def forgetStorage(node) -> None:
    """Detach and remove ``node``'s storage node: its data is then new, and Save asks where to write it."""
    storage = node.GetStorageNode()
    if storage is not None:
        node.SetAndObserveStorageNodeID(None)
        slicer.mrmlScene.RemoveNode(storage)


def placeBesides(node, volumeNode) -> None:
    """Put ``node`` under the input volume's parent (its study) in the subject hierarchy."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    volumeItem = sh.GetItemByDataNode(volumeNode)
    item = sh.GetItemByDataNode(node)
    if volumeItem and item:
        sh.SetItemParent(item, sh.GetItemParent(volumeItem))
