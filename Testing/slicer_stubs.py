"""Stand-ins for ``slicer`` and ``qt`` (real vtk) under which the module's logic runs without Slicer.

``StubbedModuleTest`` imports ``KidneyTumorSeg.py`` (and its ``KidneyTumorSegSlicer`` helpers) against
minimal stand-ins once per test class and restores ``sys.modules`` afterwards; the test_slicer_<helper>.py
files that check a helper's Slicer-free paths derive from it. Slicer's real MRML classes are in
slicer_harness.py (test_slicer_*mrml*.py).
"""
from __future__ import annotations

import sys
import unittest
from pathlib import Path

from slicer_harness import MODULE_DIR, MODULE_FILE

SLICER_DIR = MODULE_DIR / "KidneyTumorSegSlicer"  # the module's Slicer-side helpers


def in_slicer() -> bool:
    return "slicer" in sys.modules and hasattr(sys.modules["slicer"], "app")


_STUBBED = ("qt", "slicer", "slicer.util", "slicer.i18n", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper")


def has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


class _Timer:
    """qt.QTimer stand-in that the test fires by hand."""

    def __init__(self):
        self.slots = []
        self.active = False

    def setInterval(self, ms):
        self.interval = ms

    def connect(self, signal, slot):
        self.slots.append(slot)

    def start(self):
        self.active = True

    def stop(self):
        self.active = False

    def fire(self):
        for slot in list(self.slots):
            slot()


class _VolumeNode:
    """A scalar volume node stand-in: voxels [k, j, i] and an IJK-to-RAS matrix."""

    def __init__(self, array, ijk_to_ras):
        self.array = array
        self.ijk_to_ras = ijk_to_ras

    def GetIJKToRASMatrix(self, matrix):
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, float(self.ijk_to_ras[r, c]))

    def GetName(self):
        return "phantom"

    def GetImageData(self):
        return self.array  # the module only checks that there are voxels

    def GetParentTransformNode(self):
        return None


class RoiNode:
    """A markups ROI stand-in: ROI-to-world matrix and size along the ROI's own axes."""

    def __init__(self, object_to_world, size):
        self.object_to_world = object_to_world
        self.size = size

    def GetObjectToWorldMatrix(self):  # as vtkMRMLMarkupsROINode: returns its matrix, takes no argument
        import vtk

        matrix = vtk.vtkMatrix4x4()
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, float(self.object_to_world[r, c]))
        return matrix

    def GetSize(self):
        return tuple(self.size)


def _forget_slicer_helpers() -> None:
    """Drop imported KidneyTumorSegSlicer modules (they hold the stand-ins they were imported with)."""
    for name in [m for m in sys.modules if m.split(".")[0] == SLICER_DIR.name]:
        del sys.modules[name]


def _load_module_with_stubs(home: Path):
    """Import KidneyTumorSeg.py against minimal slicer / qt stand-ins; returns the module.

    As Slicer does for a scripted module, the module's folder goes on sys.path, so that
    ``KidneyTumorSegSlicer`` (imported with the same stand-ins) is found next to it.
    """
    import contextlib
    import importlib.util
    import types

    import numpy as np

    class _App:
        temporaryPath = str(home / "tmp")
        slicerUserSettingsFilePath = str(home / "settings" / "Slicer.ini")
        slicerHome = str(home / "slicer")

        @staticmethod
        def testingEnabled():
            return True

        def connect(self, *args):
            pass

    slicer = types.ModuleType("slicer")
    slicer.__path__ = []
    slicer.app = _App()
    for name in ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLMarkupsROINode"):
        setattr(slicer, name, type(name, (), {}))
    util = types.ModuleType("slicer.util")
    util.VTKObservationMixin = type("VTKObservationMixin", (), {"__init__": lambda self: None})
    util.arrayFromVolume = lambda node: node.array
    util.arrayFromVTKMatrix = lambda m: np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    util.WaitCursor = contextlib.nullcontext
    slicer.util = util
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
                 "ScriptedLoadableModuleTest"):
        setattr(slm, name, type(name, (), {"__init__": lambda self, *args: None}))
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = lambda cls: cls
    pnw.WithinRange = lambda lo, hi: ("WithinRange", lo, hi)
    qt = types.ModuleType("qt")
    qt.QTimer = _Timer
    stubs = {"qt": qt, "slicer": slicer, "slicer.util": util, "slicer.i18n": i18n,
             "slicer.ScriptedLoadableModule": slm, "slicer.parameterNodeWrapper": pnw}
    sys.modules.update(stubs)
    _forget_slicer_helpers()
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    spec = importlib.util.spec_from_file_location("KidneyTumorSeg_stubbed", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@unittest.skipIf(in_slicer(), "the real Slicer is running: KidneyTumorSegTest covers the logic")
@unittest.skipUnless(has_module("vtk"), "needs vtk (pip install -e .[test])")
class StubbedModuleTest(unittest.TestCase):
    """The module imported against the stand-ins (``self.kts``, ``self.logic``), a temporary folder ``self.tmp``."""

    @classmethod
    def setUpClass(cls):
        import tempfile

        cls._saved = {name: sys.modules.get(name) for name in _STUBBED}
        cls._saved_path = list(sys.path)
        cls._home = tempfile.TemporaryDirectory(prefix="kts-slicer-")
        home = Path(cls._home.name)
        (home / "tmp").mkdir()
        from slicer_harness import write_python_slicer

        write_python_slicer(home / "slicer")  # PythonSlicer stand-in, found through slicer.app.slicerHome
        cls.kts = _load_module_with_stubs(home)
        cls.logic = cls.kts.KidneyTumorSegLogic()
        # the helper modules, as imported by the module under the stand-ins
        cls.dependencies = cls.helper("dependencies")
        cls.candidates = cls.helper("candidates")
        cls.results = cls.helper("results")
        cls.runs = cls.helper("runs")

    @staticmethod
    def helper(name: str):
        """A KidneyTumorSegSlicer module as the module imported it (under the stand-ins)."""
        return sys.modules[f"{SLICER_DIR.name}.{name}"]

    @classmethod
    def tearDownClass(cls):
        _forget_slicer_helpers()
        sys.path[:] = cls._saved_path
        for name, module in cls._saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        cls._home.cleanup()

    def setUp(self):
        import tempfile

        self._tmp = tempfile.TemporaryDirectory(prefix="kts-test-")
        self.tmp = Path(self._tmp.name)

    def tearDown(self):
        self._tmp.cleanup()

    def phantom_node(self):
        """A small phantom and a volume node stand-in of its CT."""
        import numpy as np
        from KidneyTumorSegLib.phantom import make_phantom

        phantom = make_phantom(5, shape=(32, 96, 96), spacing=(3.5, 3.5, 5.0), n_tumors=1)
        image = phantom.image
        ijk_to_ras = np.eye(4)
        lps_to_ras = np.diag([-1.0, -1.0, 1.0])
        ijk_to_ras[:3, :3] = lps_to_ras @ np.asarray(image.direction).reshape(3, 3) @ np.diag(image.spacing)
        ijk_to_ras[:3, 3] = lps_to_ras @ np.asarray(image.origin)
        return phantom, _VolumeNode(image.array, ijk_to_ras)

    def run_to_end(self, run, seconds=180):
        """Fire ``run``'s timer until the run has ended."""
        import time

        deadline = time.time() + seconds
        while run.status == "running" and time.time() < deadline:
            run.timer.fire()
            time.sleep(0.1)
        self.assertNotEqual(run.status, "running", "the background run did not finish")


def bundle_with_own_values(path: Path, candidate_threshold: float = 0.6, keep_components: int = 1):
    """A tiny bundle whose own candidate threshold and kidney count differ from the method's 0.8 and 2
    (as an imported model's may)."""
    from dataclasses import replace

    from helpers_bundle import make_tiny_bundle, tiny_stages
    from KidneyTumorSegLib.bundles.bundle import save_bundle
    from KidneyTumorSegLib.config import PostprocessConfig

    source = make_tiny_bundle(path.parent / f"{path.name}-source", fg_bias=8.0)
    stages = [replace(s, keep_components=keep_components) if s.role == "kidney" else s for s in tiny_stages()]
    weights = {role: source.load_state_dicts(role) for role in ("roi", "kidney", "tumor")}
    return save_bundle(path, stages, weights, PostprocessConfig(candidate_threshold=candidate_threshold), name=path.name)
