"""Widget helpers of the module panel that hold no state (the widget keeps its state in the parameter node)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

import qt

import slicer
from slicer.i18n import tr as _


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


def openInSegmentEditor(segmentation, volume) -> None:
    """Switch to the Segment Editor with ``segmentation`` and its source volume selected."""
    slicer.util.selectModule("SegmentEditor")
    editor = slicer.modules.SegmentEditorWidget.editor
    editor.setSegmentationNode(segmentation)
    if hasattr(editor, "setSourceVolumeNode"):
        editor.setSourceVolumeNode(volume)
    else:  # Slicer before 5.2
        editor.setMasterVolumeNode(volume)
