"""Widget helpers of the module panel that hold no state (the widget keeps its state in the parameter node)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

import qt

import slicer
from slicer.i18n import tr as _


def forgetOutputOfOtherInput(p, lastInputID: Optional[str]) -> Tuple[bool, Optional[str]]:
    """When another input CT is chosen in parameter node ``p``, stop pointing at the previous CT's result.

    Otherwise the next run would silently overwrite that result and move it under the new CT's study.
    A segmentation chosen by hand for the current input stays. ``lastInputID``: the input's node id
    the last time this was asked. Returns (whether the output was forgotten, the input's node id now).
    """
    from .nodes import REF_INPUT

    inputID = p.inputVolume.GetID() if p.inputVolume else None
    segmentation = p.outputSegmentation
    if inputID == lastInputID or segmentation is None or inputID is None:
        return False, inputID
    source = segmentation.GetNodeReference(REF_INPUT)
    if source is None or source.GetID() == inputID:
        return False, inputID
    p.outputSegmentation = None
    return True, inputID


def showRunState(ui, running: bool, blocker: str) -> None:
    """The Segment button (Cancel while ``running``) and the settings sections (locked while running);
    ``blocker``: why Segment cannot run now (empty when it can)."""
    for section in (ui.inputsCollapsibleButton, ui.outputsCollapsibleButton, ui.advancedCollapsibleButton):
        section.enabled = not running
    if running:
        ui.segmentButton.text = _("Cancel")
        ui.segmentButton.toolTip = _("Stop the segmentation; the scene is left as it was.")
        ui.segmentButton.enabled = True
        return
    ui.segmentButton.text = _("Segment")
    ui.segmentButton.enabled = not blocker
    ui.segmentButton.toolTip = blocker or _("Segment the kidneys and kidney tumors in the input CT.")


def addImportMenu(button, fromFolder: Callable[[], None], fromFile: Callable[[], None]) -> None:
    """Give the import button its menu: a bundle folder, or a manifest.json / .zip file."""
    menu = qt.QMenu(button)
    menu.addAction(_("From a folder…")).connect("triggered()", fromFolder)
    menu.addAction(_("From a file (manifest.json or .zip)…")).connect("triggered()", fromFile)
    button.setMenu(menu)


def askModelSource(folder: bool) -> str:
    """A model bundle or nnU-Net model folder (``folder``), or manifest.json / .zip chosen by the user; empty
    when cancelled."""
    if folder:
        return qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(),
                                                   _("Import a model bundle or nnU-Net model folder"))
    return qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Import model"), "",
                                          _("Model bundle or nnU-Net export (manifest.json *.zip)"))


def fillModelCombo(combo, models: Sequence[Tuple[str, str]]) -> None:
    """Replace the combo's items with ``models`` ((label, folder) pairs) without emitting signals."""
    wasBlocked = combo.blockSignals(True)
    combo.clear()
    for label, path in models:
        combo.addItem(label, path)
    combo.blockSignals(wasBlocked)


def syncModelCombo(combo, modelPath: str) -> None:
    """Select ``modelPath`` in the combo (added as "Other" when not listed) without emitting signals."""
    index = combo.findData(modelPath)
    if index < 0 and modelPath:
        combo.addItem(_("Other: {name}").format(name=Path(modelPath).name), modelPath)
        index = combo.count - 1
    if index != combo.currentIndex:
        wasBlocked = combo.blockSignals(True)
        combo.currentIndex = index
        combo.blockSignals(wasBlocked)


def selectedTableRow(view) -> Optional[int]:
    """The table node's own row of the first selected row in a qMRMLTableView, or None."""
    if view.selectionModel() is None:
        return None
    indexes = view.selectionModel().selectedIndexes()
    if not indexes:
        return None
    # the view may be sorted: map back to the model's row, which is the table's own row because
    # results.writeFindings shows the column names as the header (not as a first model row)
    return view.sortFilterProxyModel().mapToSource(indexes[0]).row()


def showFindingsTable(view, segmentation) -> None:
    """Show the findings table of ``segmentation`` (none for None) in the qMRMLTableView ``view``."""
    from .nodes import REF_FINDINGS

    table = segmentation.GetNodeReference(REF_FINDINGS) if segmentation else None
    shown = view.mrmlTableNode()
    if (shown.GetID() if shown else None) != (table.GetID() if table else None):
        view.setMRMLTableNode(table)


def importModel(logic, source: str):
    """Import the model at ``source`` (empty: the dialog was cancelled) into the user models folder, asking
    before it replaces one of the same name; its folder, or None when nothing was imported."""
    if not source:
        return None
    with slicer.util.tryWithErrorDisplay(_("The model could not be imported."), waitCursor=True):
        target = logic.modelImportTarget(source)
        if target.exists() and not slicer.util.confirmOkCancelDisplay(
                _("A model named '{name}' is already in your models folder. Replace it?").format(name=target.name)):
            return None
        path = logic.importModel(source, overwrite=target.exists())
        slicer.util.showStatusMessage(_("Model imported into {path}").format(path=path), 5000)
        return path
    return None  # the import failed: tryWithErrorDisplay showed why


def openInSegmentEditor(segmentation, volume) -> None:
    """Switch to the Segment Editor with ``segmentation`` and its source volume selected."""
    slicer.util.selectModule("SegmentEditor")
    editor = slicer.modules.SegmentEditorWidget.editor
    editor.setSegmentationNode(segmentation)
    if hasattr(editor, "setSourceVolumeNode"):
        editor.setSourceVolumeNode(volume)
    else:  # Slicer before 5.2
        editor.setMasterVolumeNode(volume)


def exportDicomSegDialog(p) -> None:
    """Ask where to write the result of parameter node ``p`` as a DICOM SEG (installing highdicom if needed),
    then write it (``dicomexport``); a problem is shown in a dialog, the scene is not changed."""
    from KidneyTumorSegLib.geometry.volume import InputError

    from . import dependencies, dicomexport
    from .nodes import REF_INPUT

    segmentation = p.outputSegmentation if p is not None else None
    volume = (segmentation.GetNodeReference(REF_INPUT) or p.inputVolume) if segmentation is not None else None
    if volume is None or not dependencies.ensureDicomSeg():
        return
    path = qt.QFileDialog.getSaveFileName(None, _("Export DICOM SEG"), f"{segmentation.GetName()}.seg.dcm",
                                          _("DICOM files (*.dcm)"))
    if not path:
        return
    try:
        with slicer.util.WaitCursor():
            # the file dialog has asked before replacing a file
            written = dicomexport.exportDicomSeg(segmentation, volume, path, overwrite=True)
    except (ValueError, OSError, InputError) as exc:
        slicer.util.errorDisplay(str(exc), windowTitle=_("KidneyTumorSeg: export DICOM SEG"))
        return
    slicer.util.showStatusMessage(_("DICOM SEG written to {path}").format(path=written), 5000)
