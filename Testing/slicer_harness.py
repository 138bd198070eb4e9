"""Slicer's own classes without Slicer's application: PyPI's slicer-core, with stand-ins only for Qt and the app.

slicer-core (Kitware; Python >= 3.10) has Slicer's MRML scene, nodes, storage nodes, module logics
and its copy of ``slicer.util``, but no Qt and no application. ``SlicerHarness.install`` builds
what the application would (one scene, ``slicer.mrmlScene``, with the real module logics on it)
and puts a stand-in, each commented with what it replaces, in place of: ``slicer.app`` (folders,
``coreIOManager().loadNodes`` through the real volume and segmentation logics, ``processEvents``),
``slicer.modules.<name>.logic()``, ``slicer.i18n``, ``qt`` (QTimer, the wait cursor), the
``ScriptedLoadableModule`` base classes, ``parameterNodeWrapper``, the SampleData module and the
subject-hierarchy plugin logic's node added / removed handling. Everything else is Slicer's own.

Used, through mrml_fixtures.py, by the real-MRML tests (test_slicer_*mrml*.py: results, geometry,
candidate edits, the logic end to end), which skip with ``unavailable()``'s reason where slicer-core
cannot be installed (Python 3.9, Slicer 5.8's); there the stand-in tests (test_slicer_<helper>.py,
with slicer_stubs.py, which borrows this file's paths) cover the module's logic instead.
"""
from __future__ import annotations

import importlib.util
import logging
import shlex
import sys
import time
import types
import unittest
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "KidneyTumorSeg"
MODULE_FILE = MODULE_DIR / "KidneyTumorSeg.py"
HELPERS = "KidneyTumorSegSlicer"
# what install() puts into sys.modules (restored by uninstall())
_MODULES = ("qt", "slicer.i18n", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "SampleData")


def unavailable() -> str:
    """Why the real-MRML tests cannot run here (empty when they can)."""
    if sys.version_info < (3, 10):
        return "slicer-core needs Python >= 3.10 (the stand-in tests, Testing/slicer/test_slicer_*.py without mrml, cover Python 3.9)"
    if importlib.util.find_spec("slicer_core") is None:
        return "needs slicer-core (pip install -e .[slicer])"
    return ""


def write_python_slicer(home: Path) -> Path:
    """A ``PythonSlicer`` in ``home/bin`` that runs this interpreter (Slicer's launcher of its own Python).

    A script that runs the interpreter by its own path rather than a link to it: a link elsewhere
    loses a virtual environment (Python finds pyvenv.cfg beside the path it was started by).
    """
    (home / "bin").mkdir(parents=True, exist_ok=True)
    if sys.platform == "win32":
        launcher = home / "bin" / "PythonSlicer.exe"
        launcher.symlink_to(sys.executable)
        return launcher
    launcher = home / "bin" / "PythonSlicer"
    launcher.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n', encoding="utf-8")
    launcher.chmod(0o755)
    return launcher


class QTimer:
    """Replaces ``qt.QTimer``: a started timer fires its slots from ``slicer.app.processEvents()``."""

    running: List["QTimer"] = []

    def __init__(self, parent=None):
        self._slots = []
        self._interval = 0
        self._due = 0.0

    def setInterval(self, ms):
        self._interval = int(ms)

    def connect(self, signal, slot):
        assert signal == "timeout()", signal
        self._slots.append(slot)

    def start(self, ms=None):
        if ms is not None:
            self._interval = int(ms)
        self._due = time.monotonic() + self._interval / 1000.0
        if self not in QTimer.running:
            QTimer.running.append(self)

    def stop(self):
        if self in QTimer.running:
            QTimer.running.remove(self)

    def isActive(self):
        return self in QTimer.running

    @staticmethod
    def fireDue() -> None:
        now = time.monotonic()
        for timer in list(QTimer.running):
            if timer.isActive() and now >= timer._due:
                timer._due = now + timer._interval / 1000.0
                for slot in list(timer._slots):
                    slot()


def _headless():
    """KidneyTumorSegSlicer.headless (what the web server gives the helpers), imported from the module's folder."""
    spec = importlib.util.spec_from_file_location("_kts_headless", MODULE_DIR / HELPERS / "headless.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class App(_headless().HeadlessApp):
    """Replaces ``slicer.app`` (qSlicerApplication): the headless application's folders and IO, with the
    test event loop, test mode and no cursor."""

    def processEvents(self):
        QTimer.fireDue()

    def testingEnabled(self):
        return True  # as when Slicer runs its self-tests: no confirmation dialogs

    def connect(self, *args):
        pass

    def setOverrideCursor(self, cursor):
        pass

    def restoreOverrideCursor(self):
        pass


class SampleDataLogic:
    """Replaces the SampleData module's logic (a Qt scripted module): a registered source is a local file."""

    sources: Dict[str, Dict] = {}

    @classmethod
    def registerCustomSampleDataCategory(cls, category, title=None):
        pass

    @classmethod
    def registerCustomSampleDataSource(cls, category="Custom", sampleName=None, uris=None, fileNames=None,
                                       nodeNames=None, customDownloader=None, thumbnailFileName=None, **kwargs):
        cls.sources[sampleName] = dict(uris=uris, nodeNames=nodeNames, customDownloader=customDownloader)

    def downloadSample(self, sampleName):
        import slicer
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        source = self.sources[sampleName]
        return slicer.util.loadVolume(url2pathname(urlparse(source["uris"]).path), {"name": source["nodeNames"]})


def _parameter_node_wrapper(cls):
    """Replaces ``slicer.parameterNodeWrapper.parameterNodeWrapper``: typed fields kept on the wrapper."""

    def __init__(self, node):
        self.parameterNode = node
        for name in getattr(cls, "__annotations__", {}):
            setattr(self, name, getattr(cls, name, None))

    return type(cls.__name__, (), {"__init__": __init__, "__annotations__": dict(cls.__annotations__)})


def _scripted_module_classes():
    """Replace ``slicer.ScriptedLoadableModule``'s base classes (Slicer's Base/Python), which need Qt."""

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        # as Slicer's: one vtkMRMLScriptedModuleNode per module, a singleton tagged with the module's name
        def __init__(self, parent=None):
            self.moduleName = type(self).__name__[:-len("Logic")]

        def getParameterNode(self):
            import slicer

            node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.vtkMRMLScriptedModuleNode()
                node.SetSingletonTag(self.moduleName)
                node.SetModuleName(self.moduleName)
                node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
                node.SetHideFromEditors(True)
                node = slicer.mrmlScene.AddNode(node)
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):  # runTest by default, as Slicer's
        def delayDisplay(self, message, msec=None):
            logging.info("self-test: %s", message)

    return {cls.__name__: cls for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget,
                                          ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest)}


def _subject_hierarchy_plugin():
    """Scene observers that replace qSlicerSubjectHierarchyPluginLogic's onNodeAdded / onNodeAboutToBeRemoved.

    In Slicer every data node shown in the data tree gets an item under the scene as it is added,
    and a removed data node's item goes with it.
    """
    import slicer
    import vtk

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAdded(scene, event, node):
        if not node.IsA("vtkMRMLStorableNode") or node.GetHideFromEditors():
            return
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        if not sh.GetItemByDataNode(node):
            sh.CreateItem(sh.GetSceneItemID(), node)

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAboutToBeRemoved(scene, event, node):
        if not node.IsA("vtkMRMLStorableNode"):
            return
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        item = sh.GetItemByDataNode(node) if sh is not None else 0
        if item:
            sh.RemoveItem(item, False, False)

    return onNodeAdded, onNodeAboutToBeRemoved


def _stand_in_modules() -> Dict[str, types.ModuleType]:
    """The modules that replace Slicer's Qt-based ones, by their names in sys.modules."""
    i18n = _headless().i18nModule()  # replaces slicer.i18n (Qt's translator)
    slm = types.ModuleType("slicer.ScriptedLoadableModule")  # replaces the Qt base classes
    for name, cls in _scripted_module_classes().items():
        setattr(slm, name, cls)
    pnw = types.ModuleType("slicer.parameterNodeWrapper")  # replaces the parameter node wrapper (Qt GUI binding)
    pnw.parameterNodeWrapper = _parameter_node_wrapper
    pnw.WithinRange = lambda lo, hi: ("WithinRange", lo, hi)
    qt = types.ModuleType("qt")  # replaces PythonQt: the timer and the wait cursor (slicer.util.WaitCursor)
    qt.QTimer = QTimer
    qt.Qt = types.SimpleNamespace(WaitCursor=0)
    qt.QApplication = types.SimpleNamespace(setOverrideCursor=lambda cursor: None, restoreOverrideCursor=lambda: None)
    sample_data = types.ModuleType("SampleData")  # replaces the SampleData module (Qt scripted module)
    sample_data.SampleDataLogic = SampleDataLogic
    return {"qt": qt, "slicer.i18n": i18n, "slicer.ScriptedLoadableModule": slm, "slicer.parameterNodeWrapper": pnw,
            "SampleData": sample_data}


class SlicerHarness:
    """One bare Slicer scene with its module logics, and the stand-ins for Qt and the application.

    ``install()`` makes ``slicer.mrmlScene``, ``slicer.app``, ``slicer.modules`` and the stand-in
    modules available and imports ``KidneyTumorSeg.py`` against them (``self.module``);
    ``uninstall()`` undoes all of it.
    """

    def __init__(self, home: Path):
        self.home = Path(home)
        self.module = None
        self._saved_modules: Dict[str, object] = {}
        self._saved_path: List[str] = []

    # -- the application's scene and module logics (real classes) ---------------------------

    def _make_scene(self):
        import slicer

        self.scene = slicer.vtkMRMLScene()
        self.applicationLogic = slicer.vtkSlicerApplicationLogic()
        self.applicationLogic.SetMRMLScene(self.scene)
        cache = slicer.vtkCacheManager()  # the application gives the scene a cache folder (Sample Data's)
        cache.SetRemoteCacheDirectory(str(self.home / "cache"))
        self.scene.SetCacheManager(cache)
        self.logics = {}
        for name, cls, registered in (
                ("colors", slicer.vtkSlicerColorLogic, "Colors"),
                ("volumes", slicer.vtkSlicerVolumesLogic, "Volumes"),
                ("segmentations", slicer.vtkSlicerSegmentationsModuleLogic, "Segmentations"),
                ("subjecthierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic, "SubjectHierarchy"),
                ("markups", slicer.vtkSlicerMarkupsLogic, "Markups"),
                ("tables", slicer.vtkSlicerTablesLogic, "Tables"),
                ("transforms", slicer.vtkSlicerTransformLogic, "Transforms")):
            logic = cls()
            logic.SetMRMLApplicationLogic(self.applicationLogic)
            logic.SetMRMLScene(self.scene)
            self.applicationLogic.SetModuleLogic(registered, logic)
            self.logics[name] = logic
        onNodeAdded, onNodeAboutToBeRemoved = _subject_hierarchy_plugin()
        self._observers = [
            self.scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent, onNodeAdded),
            self.scene.AddObserver(slicer.vtkMRMLScene.NodeAboutToBeRemovedEvent, onNodeAboutToBeRemoved),
            # as in Slicer, a cleared scene has its subject hierarchy node again at once
            self.scene.AddObserver(slicer.vtkMRMLScene.EndCloseEvent, lambda scene, event:
                                   slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene))]
        slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)

    def install(self):
        """Put the scene, the logics and the stand-ins in place and import the module; returns it."""
        import slicer

        (self.home / "tmp").mkdir(parents=True, exist_ok=True)
        write_python_slicer(self.home / "slicer")
        self._make_scene()
        stand_ins = _stand_in_modules()
        self._saved_modules = {name: sys.modules.get(name) for name in _MODULES}
        sys.modules.update(stand_ins)
        slicer.mrmlScene = self.scene  # the application's scene
        # replaces slicer.app (qSlicerApplication)
        slicer.app = App(self.home, _headless().IOManager(self.logics), self.applicationLogic)
        # replaces slicer.modules.<name>.logic() (the application's module manager)
        slicer.modules = types.SimpleNamespace(**{
            name: types.SimpleNamespace(logic=lambda logic=logic: logic) for name, logic in self.logics.items()})
        for name in ("i18n", "ScriptedLoadableModule", "parameterNodeWrapper"):
            setattr(slicer, name, stand_ins[f"slicer.{name}"])
        self._saved_path = list(sys.path)
        sys.path.insert(0, str(MODULE_DIR))  # as Slicer does for a scripted module: its helpers beside it
        forget_helpers()
        spec = importlib.util.spec_from_file_location("KidneyTumorSeg", MODULE_FILE)
        self.module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.module)
        return self.module

    def uninstall(self):
        import slicer

        QTimer.running.clear()
        SampleDataLogic.sources.clear()
        forget_helpers()
        sys.path[:] = self._saved_path
        for name, module in self._saved_modules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for name in ("app", "mrmlScene", "modules", "i18n", "ScriptedLoadableModule", "parameterNodeWrapper"):
            if hasattr(slicer, name):
                delattr(slicer, name)
        for tag in self._observers:
            self.scene.RemoveObserver(tag)
        self.scene.Clear(1)

    # -- what the tests look at ---------------------------------------------------------------

    @staticmethod
    def helper(name: str):
        """The module's helper ``KidneyTumorSegSlicer.<name>``, as imported under the harness."""
        import importlib

        return importlib.import_module(f"{HELPERS}.{name}")

    def nodes(self):
        """(ID, class, name) of every node in the scene, sorted."""
        collection = self.scene.GetNodes()
        found = (collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems()))
        return sorted((n.GetID(), n.GetClassName(), n.GetName() or "") for n in found)


def forget_helpers() -> None:
    """Drop imported KidneyTumorSegSlicer modules (they hold the slicer and qt they were imported with)."""
    for name in [m for m in sys.modules if m.split(".")[0] == HELPERS]:
        del sys.modules[name]
