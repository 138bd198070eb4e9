"""What the helpers ask of Slicer's application, for a process that has Slicer's MRML classes but no application.

The browser front-end (``KidneyTumorSegWeb``, on slicer-core and trame-slicer) runs these helpers with no
Qt and no qSlicerApplication. :func:`install` puts in place what they use of the application:
``slicer.mrmlScene`` (the server's scene), ``slicer.app`` (a temporary folder, the user settings
folder, and file loading through the module logics, as Slicer's volume and segmentation readers do)
and ``slicer.i18n`` (text left untranslated). The tests' harness (Testing/slicer_harness.py) builds on
the same classes.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Dict


class IOManager:
    """``slicer.app.coreIOManager()``: loads through the same module logics as Slicer's readers
    (qSlicerVolumesReader, qSlicerSegmentationsReader) do; ``logics`` by name ("volumes", "segmentations")."""

    def __init__(self, logics: Dict[str, object]):
        self.logics = logics

    def fileType(self, path) -> str:
        return "SegmentationFile" if str(path).endswith(".seg.nrrd") else "VolumeFile"

    def loadNodes(self, fileType, properties, loaded, messages) -> bool:
        path = properties["fileName"]
        name = properties.get("name") or Path(path).name.split(".")[0]
        if fileType == "SegmentationFile":
            node = self.logics["segmentations"].LoadSegmentationFromFile(path, True, name, None, messages)
        elif fileType == "VolumeFile":
            options = 1 if properties.get("labelmap") else 0  # qSlicerVolumesReader: bit 0 = label map
            node = _addArchetypeVolume(self.logics["volumes"], path, name, options, messages)
        else:
            raise NotImplementedError(f"no reader for {fileType} without Slicer's application")
        if node is None:
            return False
        loaded.AddItem(node)
        return True


def _addArchetypeVolume(logic, path, name, options, messages):
    """vtkSlicerVolumesLogic::AddArchetypeVolume with the message collection where the build has it (Slicer
    5.12 on; slicer-core 5.11, trame-slicer's, has the call without it)."""
    try:
        return logic.AddArchetypeVolume(path, name, options, None, messages)
    except TypeError:
        return logic.AddArchetypeVolume(path, name, options)


class HeadlessApp:
    """``slicer.app`` without Qt: its folders under ``home``, its IO manager and application logic."""

    def __init__(self, home: Path, ioManager: IOManager, applicationLogic):
        self.temporaryPath = str(home / "tmp")
        self.slicerHome = str(home / "slicer")
        self.slicerUserSettingsFilePath = str(home / "settings" / "Slicer.ini")
        self._io = ioManager
        self._applicationLogic = applicationLogic

    def coreIOManager(self):
        return self._io

    ioManager = coreIOManager

    def applicationLogic(self):
        return self._applicationLogic

    def processEvents(self):
        pass  # the caller's own event loop runs (trame's asyncio loop)

    def testingEnabled(self):
        return False

    def layoutManager(self):
        return None  # views belong to the caller (trame-slicer's view manager)


def i18nModule() -> types.ModuleType:
    """``slicer.i18n`` without Qt's translator: the text as written."""
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    return i18n


def install(scene, logics: Dict[str, object], applicationLogic, home: Path) -> HeadlessApp:
    """Make ``scene`` the application's scene and a :class:`HeadlessApp` (folders under ``home``) its
    ``slicer.app``; ``logics``: the module logics by name ("volumes", "segmentations", ...)."""
    import slicer

    home = Path(home)
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    app = HeadlessApp(home, IOManager(logics), applicationLogic)
    if "slicer.i18n" not in sys.modules:
        sys.modules["slicer.i18n"] = i18nModule()
    slicer.i18n = sys.modules["slicer.i18n"]
    slicer.mrmlScene = scene
    slicer.app = app
    slicer.modules = types.SimpleNamespace(**{
        name: types.SimpleNamespace(logic=lambda logic=logic: logic) for name, logic in logics.items()})
    return app
