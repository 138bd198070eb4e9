"""A finished run's files in the scene: the segmentation, the candidate map and the findings table."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional

import vtk

import slicer
from slicer.i18n import tr as _

from .kidneyregion import storeKidneyRegion
from .nodes import ATTR_REPORT, REF_CANDIDATES, REF_FINDINGS, REF_INPUT, forgetStorage, placeBesides, \
    removeNodeWithDependents, replaceSegments


def loadResults(run, outputs: Dict[str, str]) -> None:
    """Bring the finished ``run``'s files into the scene (the only place a run changes the scene).

    ``outputs``: the core's output paths by kind ("segmentation", "candidates", "label", "report", ...).
    Sets ``run.segmentationNode``, ``run.tableNode`` and ``run.messages``. A failure leaves the scene
    as it was.
    """
    report = json.loads(Path(outputs["report"]).read_text(encoding="utf-8"))
    volumeNode = run.volumeNode
    if volumeNode.GetScene() is None:
        raise RuntimeError(_("The input volume was removed from the scene during the run."))
    segmentation = run.outputSegmentation
    if segmentation is not None and segmentation.GetScene() is None:
        segmentation = None  # removed during the run: make a new one
    loaded, candidates = _loadFiles(outputs, volumeNode)
    segmentation, table = _fillNodes(segmentation, loaded, candidates, volumeNode, report)
    # from here on nothing fails: swap in the new candidate map and link the findings
    forgetStorage(candidates)  # its file is in the run's folder, removed when the run ends
    removeNodeWithDependents(segmentation.GetNodeReference(REF_CANDIDATES))
    segmentation.SetNodeReferenceID(REF_CANDIDATES, candidates.GetID())
    segmentation.SetNodeReferenceID(REF_FINDINGS, table.GetID())

    for node in (segmentation, table, candidates):
        placeBesides(node, volumeNode)
    showSegmentation(segmentation, volumeNode, run.show3D)
    run.segmentationNode = segmentation
    run.tableNode = table
    reasons = (report.get("plausibility") or {}).get("reasons", [])
    warning = [_("Implausible result, check it: {reasons}").format(reasons="; ".join(reasons))] if reasons else []
    run.messages = warning + list(report.get("messages", []))


def _loadFiles(outputs: Dict[str, str], volumeNode):
    """The run's segmentation (a node to copy from) and its candidate map, which keeps the kidney region
    of the label map (``kidneyregion``); on failure neither is left in the scene."""
    loaded = candidates = None
    try:
        loaded = slicer.util.loadSegmentation(str(outputs["segmentation"]))
        candidates = slicer.util.loadLabelVolume(str(outputs["candidates"]), {
            "name": slicer.mrmlScene.GenerateUniqueName(f"{volumeNode.GetName()} tumor candidates"), "show": False})
        storeKidneyRegion(candidates, slicer.util.arrayFromVolume(candidates), outputs["label"])
    except Exception:
        removeNodeWithDependents(loaded)
        removeNodeWithDependents(candidates)
        raise
    return loaded, candidates


def _fillNodes(segmentation, loaded, candidates, volumeNode, report):
    """``(segmentation, table)``: the segments of ``loaded`` in ``segmentation`` (a new node when None), tied
    to the input, and the findings table filled. On failure the new nodes and ``candidates`` are removed
    and an overwritten segmentation gets its segments back: the scene is as it was."""
    created = [candidates]
    backup = None
    try:
        if segmentation is None:
            segmentation = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", slicer.mrmlScene.GenerateUniqueName(f"{volumeNode.GetName()} kidneys"))
            segmentation.CreateDefaultDisplayNodes()
            created.append(segmentation)
        else:  # overwritten: keep its segments to put back on failure
            backup = slicer.vtkSegmentation()
            backup.DeepCopy(segmentation.GetSegmentation())
        try:
            replaceSegments(segmentation, loaded)
        finally:
            removeNodeWithDependents(loaded)
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentation.SetNodeReferenceID(REF_INPUT, volumeNode.GetID())
        segmentation.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        candidates.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        table = segmentation.GetNodeReference(REF_FINDINGS)
        if table is None:
            table = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLTableNode", slicer.mrmlScene.GenerateUniqueName(f"{volumeNode.GetName()} findings"))
            created.append(table)
        writeFindings(table, report)
    except Exception:
        removeNodeWithDependents(loaded)
        if backup is not None:
            segmentation.GetSegmentation().DeepCopy(backup)
        for node in created:
            removeNodeWithDependents(node)
        raise
    return segmentation, table


def showSegmentation(segmentation, volumeNode, show3D: bool = False) -> None:
    """Show the segmentation over ``volumeNode`` in the slice views, and in 3D when asked."""
    slicer.util.setSliceViewerLayers(background=volumeNode)
    display = segmentation.GetDisplayNode()
    if display is not None:
        display.SetVisibility(True)
        display.SetVisibility2D(True)
    showSegmentation3D(segmentation, show3D)


def showSegmentation3D(segmentation, show3D: bool) -> None:
    if show3D:
        segmentation.CreateClosedSurfaceRepresentation()
    display = segmentation.GetDisplayNode()
    if display is not None:
        display.SetVisibility3D(bool(show3D))


def candidateOfRow(table, row: int) -> Optional[Dict]:
    """``{"id", "kept"}`` of the tumor candidate in findings-table ``row``, or None for another row."""
    report = json.loads(table.GetAttribute(ATTR_REPORT) or "{}")
    from KidneyTumorSegLib.findings.findings_table import findings_rows

    rows = findings_rows(report)
    if not 0 <= row < len(rows):
        return None
    candidateId = rows[row].get("candidate_id")
    if candidateId in (None, ""):
        return None
    for candidate in report.get("tumor_candidates", []):
        if candidate["id"] == int(candidateId):
            return {"id": int(candidate["id"]), "kept": bool(candidate["kept"])}
    return None


def writeFindings(table, report: Dict) -> None:
    """Fill ``table`` with the core's findings rows and keep the report with it."""
    from KidneyTumorSegLib.findings.findings_table import TABLE_COLUMNS, findings_rows

    rows = findings_rows(report)
    vtkTable = vtk.vtkTable()
    for name, kind in TABLE_COLUMNS:
        values = [row.get(name) for row in rows]
        # numbers stay numeric where every row has one; a column with gaps (kidney rows have no
        # diameter or probability) is text, so the gaps show empty rather than "nan"
        column = _vtkColumn(kind if all(v is not None for v in values) else "string")
        column.SetName(name)
        for value in values:
            _appendValue(column, value)
        vtkTable.AddColumn(column)
    wasModifying = table.StartModify()
    table.SetAndObserveTable(vtkTable)
    # column names as the header: otherwise the view shows them as a first row, and a selected
    # view row would be the table row below the one meant (panel.selectedTableRow relies on this).
    # Column titles replace SetUseColumnNameAsColumnHeader, which Slicer 5.13 reports as deprecated;
    # a Slicer without titles takes the older call.
    if hasattr(table, "SetUseColumnTitleAsColumnHeader"):
        for name, _kind in TABLE_COLUMNS:
            table.SetColumnTitle(name, name)
        table.SetUseColumnTitleAsColumnHeader(True)
    else:
        table.SetUseColumnNameAsColumnHeader(True)
    table.SetAttribute(ATTR_REPORT, json.dumps(report))
    table.SetLocked(True)
    table.EndModify(wasModifying)


def _vtkColumn(kind: str):
    """A VTK array for a findings column of type "int", "float" or "string"."""
    if kind == "int":
        return vtk.vtkIntArray()
    if kind == "float":
        return vtk.vtkDoubleArray()
    return vtk.vtkStringArray()


def _appendValue(column, value) -> None:
    if isinstance(column, vtk.vtkStringArray):
        column.InsertNextValue("" if value is None else str(value))
    elif isinstance(column, vtk.vtkIntArray):
        column.InsertNextValue(0 if value is None else int(value))
    else:
        column.InsertNextValue(float("nan") if value is None else float(value))
