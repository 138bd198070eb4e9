"""Checks of the 3D Slicer module's files that need no Slicer.

The module (``KidneyTumorSeg/KidneyTumorSeg.py``) and its Slicer-side helpers
(``KidneyTumorSeg/KidneyTumorSegSlicer/``) import ``slicer``, so they are read
as text and AST here: their ``self.ui.<name>`` widgets exist in the .ui, the
parameter-node fields and the .ui's ``SlicerParameterName`` properties match
one to one (with widget types the parameter-node wrapper can bind), every file
compiles and parses as Python 3.9 and stays small, the CMake lists name every
file, and the dependency list has pyproject.toml's bounds. The logic's
Slicer-free paths run against stand-ins for ``slicer`` and ``qt`` (real vtk).

Written as ``unittest`` cases so that the same file runs under pytest and,
through ``slicer_add_python_unittest``, inside Slicer, where one more case
loads the .ui with ``slicer.util.loadUI``.
"""
from __future__ import annotations

import ast
import py_compile
import re
import sys
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "KidneyTumorSeg"
MODULE_FILE = MODULE_DIR / "KidneyTumorSeg.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "KidneyTumorSeg.ui"
ICON_FILE = MODULE_DIR / "Resources" / "Icons" / "KidneyTumorSeg.png"
LIB_DIR = MODULE_DIR / "KidneyTumorSegLib"
SLICER_DIR = MODULE_DIR / "KidneyTumorSegSlicer"  # the module's Slicer-side helpers
DEPENDENCIES_FILE = SLICER_DIR / "dependencies.py"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
TOP_CMAKE = ROOT / "CMakeLists.txt"
PARAMETER_CLASS = "KidneyTumorSegParameterNode"

# widget classes the parameter-node wrapper binds to each field type: its GUI connectors match the
# widget's exact class (type(widget) == ...), so a subclass such as ctkComboBox or a QLabel is refused
# and the panel fails to open (Slicer's Base/Python/slicer/parameterNodeWrapper/guiConnectors.py)
BINDABLE = {
    "bool": {"QCheckBox", "QPushButton"},
    "int": {"QSpinBox", "QSlider"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget"},
    "str": {"QLineEdit", "QTextEdit"},
    "enum": {"QComboBox"},
    "node": {"qMRMLNodeComboBox"},
}


def _module_source() -> str:
    return MODULE_FILE.read_text(encoding="utf-8")


def _module_files() -> List[Path]:
    """KidneyTumorSeg.py and the files of its KidneyTumorSegSlicer package."""
    return [MODULE_FILE] + sorted(SLICER_DIR.rglob("*.py"))


def _ui_references() -> Set[str]:
    """Names used as ``self.ui.<name>`` in any of the module's files."""
    return {name for path in _module_files()
            for name in re.findall(r"self\.ui\.(\w+)", path.read_text(encoding="utf-8"))}


def _module_tree() -> ast.Module:
    return ast.parse(_module_source(), filename=str(MODULE_FILE))


def _ui_widgets() -> Dict[str, ET.Element]:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def _ui_property(widget: ET.Element, name: str):
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop
    return None


def _ui_parameter_names() -> Dict[str, ET.Element]:
    """SlicerParameterName -> widget."""
    out = {}
    for widget in _ui_widgets().values():
        prop = _ui_property(widget, "SlicerParameterName")
        if prop is not None:
            name = prop.findtext("string")
            assert name not in out, f"two widgets bound to {name!r}"
            out[name] = widget
    return out


def _parameter_fields() -> Dict[str, ast.expr]:
    """Field name -> annotation of the @parameterNodeWrapper class."""
    for node in _module_tree().body:
        if isinstance(node, ast.ClassDef) and node.name == PARAMETER_CLASS:
            decorators = [d.id if isinstance(d, ast.Name) else getattr(d, "attr", "") for d in node.decorator_list]
            assert "parameterNodeWrapper" in decorators, f"{PARAMETER_CLASS} is not decorated with @parameterNodeWrapper"
            return {s.target.id: s.annotation for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError(f"{PARAMETER_CLASS} not found in {MODULE_FILE.name}")


def _enum_classes() -> Set[str]:
    return {n.name for n in _module_tree().body if isinstance(n, ast.ClassDef)
            and any(getattr(b, "attr", getattr(b, "id", "")) == "Enum" for b in n.bases)}


def _field_kind(annotation: ast.expr) -> str:
    """"bool", "int", "float", "str", "enum" or "node" for a field's annotation (Annotated unwrapped)."""
    if isinstance(annotation, ast.Subscript) and getattr(annotation.value, "id", "") == "Annotated":
        inner = annotation.slice
        inner = getattr(inner, "value", inner)  # Python 3.8's ast.Index
        annotation = inner.elts[0]
    name = getattr(annotation, "id", getattr(annotation, "attr", ""))
    if name.startswith("vtkMRML"):
        return "node"
    if name in _enum_classes():
        return "enum"
    return name


def _cmake_list(text: str, variable: str) -> List[str]:
    match = re.search(r"set\(\s*" + variable + r"\s+(.*?)\)", text, re.S)
    assert match, f"set({variable} ...) not found"
    return [line.split("#")[0].strip() for line in match.group(1).splitlines() if line.split("#")[0].strip()]


def _dependency_constant(name: str):
    tree = ast.parse(DEPENDENCIES_FILE.read_text(encoding="utf-8"), filename=str(DEPENDENCIES_FILE))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in {DEPENDENCIES_FILE.name}")


def _pyproject_dependencies() -> List[str]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib  # Python 3.11+
    except ImportError:
        tomllib = None
    if tomllib is not None:
        return list(tomllib.loads(text)["project"]["dependencies"])
    block = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.S | re.M)
    return re.findall(r'"([^"]+)"', block.group(1))


class UiTest(unittest.TestCase):
    def test_every_referenced_widget_exists_in_the_ui(self):
        referenced = _ui_references()
        self.assertTrue(referenced, "the module references no self.ui widgets")
        missing = sorted(referenced - set(_ui_widgets()))
        self.assertEqual(missing, [], f"widgets used in the module's files but absent from {UI_FILE.name}")

    def test_every_parameter_field_has_a_bound_widget(self):
        missing = sorted(set(_parameter_fields()) - set(_ui_parameter_names()))
        self.assertEqual(missing, [], "parameter-node fields without a widget whose SlicerParameterName names them")

    def test_every_slicer_parameter_name_is_a_field(self):
        unknown = sorted(set(_ui_parameter_names()) - set(_parameter_fields()))
        self.assertEqual(unknown, [], "SlicerParameterName values in the .ui that are not parameter-node fields")

    def test_bound_widgets_can_represent_their_fields(self):
        widgets = _ui_parameter_names()
        for field, annotation in _parameter_fields().items():
            kind = _field_kind(annotation)
            widget = widgets[field]
            with self.subTest(field=field):
                self.assertIn(kind, BINDABLE, f"{field}: unexpected field type")
                self.assertIn(widget.get("class"), BINDABLE[kind],
                              f"{field} ({kind}) is bound to a {widget.get('class')}, which the wrapper cannot bind")
                if kind == "node":
                    node_class = getattr(annotation, "id", getattr(annotation, "attr", ""))
                    types = [s.text for s in _ui_property(widget, "nodeTypes").iter("string")]
                    self.assertEqual(types, [node_class], f"{field}: nodeTypes of {widget.get('name')}")

    def test_mrml_widgets_receive_the_scene(self):
        root = ET.parse(UI_FILE).getroot()
        receivers = {c.findtext("receiver") for c in root.iter("connection")
                     if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                     and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
        mrml = {n for n, w in _ui_widgets().items() if w.get("class") in ("qMRMLNodeComboBox", "qMRMLTableView")}
        self.assertEqual(sorted(mrml - receivers), [], "MRML widgets with no setMRMLScene connection")

    def test_panel_defaults_match_the_method(self):
        widgets = _ui_widgets()
        self.assertEqual(float(_ui_property(widgets["candidateThresholdSpinBox"], "value").findtext("double")), 0.8)
        self.assertEqual(int(_ui_property(widgets["keepComponentsSpinBox"], "value").findtext("number")), 2)
        roi = [s.text for s in _ui_property(widgets["roiSelector"], "nodeTypes").iter("string")]
        self.assertEqual(roi, ["vtkMRMLMarkupsROINode"])
        self.assertEqual(widgets["advancedCollapsibleButton"].get("class"), "ctkCollapsibleButton")
        self.assertEqual(_ui_property(widgets["segmentButton"], "enabled").findtext("bool"), "false")

    def test_icon_is_a_128_pixel_png(self):
        import struct

        data = ICON_FILE.read_bytes()
        self.assertEqual(data[:8], b"\x89PNG\r\n\x1a\n")
        self.assertEqual(data[12:16], b"IHDR")
        self.assertEqual(struct.unpack(">II", data[16:24]), (128, 128))


class ModuleSourceTest(unittest.TestCase):
    # the module file stays a thin template; each helper file stays small and single-purpose
    MAX_MODULE_LINES = 700
    MAX_HELPER_LINES = 300

    def test_helper_package_exists(self):
        names = {p.name for p in SLICER_DIR.glob("*.py")}
        self.assertTrue({"__init__.py", "dependencies.py", "models.py", "results.py", "candidates.py",
                         "sampledata.py", "runs.py"} <= names, sorted(names))

    def test_compiles(self):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:  # no __pycache__ in the source tree
            for n, path in enumerate(_module_files()):
                with self.subTest(file=path.name):
                    py_compile.compile(str(path), cfile=str(Path(tmp) / f"{n}.pyc"), doraise=True)

    def test_parses_as_python_3_9(self):
        for path in _module_files():
            with self.subTest(file=path.name):
                ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))

    def test_files_stay_small(self):
        for path in _module_files():
            limit = self.MAX_MODULE_LINES if path == MODULE_FILE else self.MAX_HELPER_LINES
            with self.subTest(file=path.name):
                lines = len(path.read_text(encoding="utf-8").splitlines())
                self.assertLess(lines, limit, f"{path.name} has {lines} lines: split it")

    def test_core_does_not_import_the_slicer_helpers(self):
        offenders = []
        for path in sorted(LIB_DIR.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                offenders += [f"{path.name}:{node.lineno}" for n in names if n.split(".")[0] == SLICER_DIR.name]
        self.assertEqual(offenders, [], "the core must run without Slicer")

    def test_template_order(self):
        names = [n.name for n in _module_tree().body if isinstance(n, (ast.ClassDef, ast.FunctionDef))]
        order = ["KidneyTumorSeg", "registerSampleData", PARAMETER_CLASS, "KidneyTumorSegWidget",
                 "KidneyTumorSegLogic", "KidneyTumorSegTest"]
        positions = [names.index(n) for n in order]
        self.assertEqual(positions, sorted(positions), f"expected the order {order}")

    def test_scripting_entry_point(self):
        logic = next(n for n in _module_tree().body if isinstance(n, ast.ClassDef) and n.name == "KidneyTumorSegLogic")
        segment = next(f for f in logic.body if isinstance(f, ast.FunctionDef) and f.name == "segment")
        args = [a.arg for a in segment.args.args]
        self.assertEqual(args[:9], ["self", "volumeNode", "model", "device", "quality", "candidateThreshold",
                                    "keepComponents", "roiNode", "outputSegmentation"])
        defaults = [ast.literal_eval(d) for d in segment.args.defaults[:7]]
        self.assertEqual(defaults, [None, "auto", "fast", 0.8, 2, None, None])

    def test_help_cites_the_methods_and_data(self):
        source = _module_source()
        for cited in ("Zakirov", "Y. Zhang", "Dahiya", "J. Zhang", "Heller", "1904.00445", "2.5D V-Net"):
            self.assertIn(cited, source)


class CMakeTest(unittest.TestCase):
    def test_every_core_file_is_listed_and_every_listed_file_exists(self):
        text = MODULE_CMAKE.read_text(encoding="utf-8")
        self.assertIsNone(re.search(r"file\s*\(\s*GLOB", text, re.I), "core files must be listed by name, not globbed")
        listed = [s.replace("${MODULE_NAME}", "KidneyTumorSeg") for s in _cmake_list(text, "MODULE_PYTHON_SCRIPTS")]
        self.assertIn("KidneyTumorSeg.py", listed)
        on_disk = sorted(str(p.relative_to(MODULE_DIR)).replace("\\", "/")
                         for folder in (LIB_DIR, SLICER_DIR) for p in folder.rglob("*.py")
                         if "__pycache__" not in p.parts)
        self.assertTrue(any(s.startswith("KidneyTumorSegSlicer/") for s in on_disk))
        self.assertEqual(sorted(set(on_disk) - set(listed)), [], "files missing from MODULE_PYTHON_SCRIPTS")
        self.assertEqual(sorted(s for s in listed if not (MODULE_DIR / s).is_file()), [],
                         "MODULE_PYTHON_SCRIPTS lists files that do not exist")
        self.assertEqual(len(listed), len(set(listed)), "a file is listed twice")

    def test_resources_are_listed_and_exist(self):
        text = MODULE_CMAKE.read_text(encoding="utf-8")
        resources = [s.replace("${MODULE_NAME}", "KidneyTumorSeg") for s in _cmake_list(text, "MODULE_PYTHON_RESOURCES")]
        self.assertEqual(sorted(resources), ["Resources/Icons/KidneyTumorSeg.png", "Resources/UI/KidneyTumorSeg.ui"])
        for resource in resources:
            self.assertTrue((MODULE_DIR / resource).is_file(), resource)
        self.assertIn("slicerMacroBuildScriptedModule(", text)
        self.assertIn("WITH_GENERIC_TESTS", text)
        self.assertIn("slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)", text)
        self.assertIn("add_subdirectory(Testing)", text)

    def test_extension_metadata(self):
        text = TOP_CMAKE.read_text(encoding="utf-8")
        for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                         "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
            self.assertRegex(text, r"set\(" + variable + r" \"[^\"]+\"\)", variable)
        # the icon and screenshots the extension index shows are files of this repository's main branch
        raw = "https://raw.githubusercontent.com/KidneyTumorSeg/KidneyTumorSeg/main/"
        urls = [u for v in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS")
                for u in re.search(r"set\(" + v + r' "([^"]+)"\)', text).group(1).split()]
        self.assertGreaterEqual(len(urls), 2)
        for url in urls:
            self.assertTrue(url.startswith(raw), url)
            self.assertTrue((ROOT / url[len(raw):]).is_file(), url)
        self.assertRegex(text, r'set\(EXTENSION_CATEGORY "Segmentation"\)')
        self.assertRegex(text, r"set\(EXTENSION_DEPENDS PyTorch\)")
        self.assertIn("add_subdirectory(KidneyTumorSeg)", text)
        self.assertIn("include(${Slicer_EXTENSION_CPACK})", text)

    def test_testing_wiring(self):
        self.assertIn("add_subdirectory(Python)", (MODULE_DIR / "Testing" / "CMakeLists.txt").read_text(encoding="utf-8"))
        text = (MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").read_text(encoding="utf-8")
        script = re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+(\S+)", text).group(1)
        self.assertEqual(script.replace("${KidneyTumorSeg_SOURCE_DIR}", str(ROOT)), str(Path(__file__).resolve()))
        self.assertIn("project(KidneyTumorSeg)", TOP_CMAKE.read_text(encoding="utf-8"))


class DependencyTest(unittest.TestCase):
    def test_module_requirements_match_pyproject(self):
        module = set(_dependency_constant("CORE_REQUIREMENTS")) | {_dependency_constant("TORCH_REQUIREMENT")}
        pyproject = set(_pyproject_dependencies())
        self.assertEqual(sorted(module - pyproject), [], "in the module but not in pyproject.toml")
        self.assertEqual(sorted(pyproject - module), [], "in pyproject.toml but not in the module")

    def test_torch_is_installed_through_the_pytorch_extension(self):
        self.assertNotIn(_dependency_constant("TORCH_REQUIREMENT"), _dependency_constant("CORE_REQUIREMENTS"))
        self.assertIn("PyTorchUtils.PyTorchUtilsLogic()", DEPENDENCIES_FILE.read_text(encoding="utf-8"))


def _in_slicer() -> bool:
    return "slicer" in sys.modules and hasattr(sys.modules["slicer"], "app")


@unittest.skipUnless(_in_slicer(), "needs 3D Slicer")
class SlicerUiTest(unittest.TestCase):
    def test_ui_loads_with_every_referenced_widget(self):
        import slicer

        widget = slicer.util.loadUI(str(UI_FILE))
        names = slicer.util.childWidgetVariables(widget)
        for name in sorted(_ui_references()):
            self.assertTrue(hasattr(names, name), name)


# --------------------------------------------------------------------------
# The logic's Slicer-free paths, with stand-ins for slicer / qt (real vtk)
# --------------------------------------------------------------------------
_STUBBED = ("qt", "slicer", "slicer.util", "slicer.i18n", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper")


def _has_module(name: str) -> bool:
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


class _RoiNode:
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


@unittest.skipIf(_in_slicer(), "the real Slicer is running: KidneyTumorSegTest covers the logic")
@unittest.skipUnless(_has_module("vtk"), "needs vtk (pip install -e .[test])")
class LogicWithoutSlicerTest(unittest.TestCase):
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
        cls.dependencies = sys.modules["KidneyTumorSegSlicer.dependencies"]
        cls.candidates = sys.modules["KidneyTumorSegSlicer.candidates"]
        cls.results = sys.modules["KidneyTumorSegSlicer.results"]

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

    # -- layout ------------------------------------------------------------------

    def test_scripting_api_is_kept(self):
        """The module's names that scripts use, whichever KidneyTumorSegSlicer file implements them."""
        for name in ("missingRequirements", "ensureDependencies", "defaultModelPath", "userModelsFolder",
                     "availableModels", "modelProblem", "modelImportTarget", "importModel", "gpuMemoryWarning",
                     "segment", "startSegmentation", "cancel", "showSegmentation", "showSegmentation3D",
                     "candidateOfRow", "setCandidateKept", "getParameterNode"):
            self.assertTrue(callable(getattr(self.logic, name, None)), name)
        for name in ("registerSampleData", "loadPhantomSample", "phantomSamplePaths", "ensurePhantomSample",
                     "SegmentationRun", "REF_INPUT", "REF_FINDINGS", "SEGMENT_TUMOR"):
            self.assertTrue(hasattr(self.kts, name), name)

    def test_helpers_find_the_module_folder(self):
        import os

        runs = sys.modules["KidneyTumorSegSlicer.runs"]
        sampledata = sys.modules["KidneyTumorSegSlicer.sampledata"]
        # the background process imports KidneyTumorSegLib from the module's folder
        self.assertEqual(runs.processEnvironment()["PYTHONPATH"].split(os.pathsep)[0], str(MODULE_DIR))
        self.assertTrue((Path(sampledata._ICONS_PATH) / ICON_FILE.name).is_file())

    # -- panel state -------------------------------------------------------------

    def test_choosing_another_input_forgets_the_previous_result(self):
        """The next run must not overwrite the previous CT's segmentation (and move it to the new study)."""
        import types

        class Node:
            def __init__(self, id_, refs=None):
                self.id, self.refs = id_, refs or {}

            def GetID(self):
                return self.id

            def GetNodeReference(self, role):
                return self.refs.get(role)

        ctA, ctB = Node("vtkMRMLScalarVolumeNode1"), Node("vtkMRMLScalarVolumeNode2")
        segA = Node("vtkMRMLSegmentationNode1", {self.kts.REF_INPUT: ctA})
        widget = types.SimpleNamespace(_lastInputID=None)
        forget = lambda p: self.kts.KidneyTumorSegWidget._forgetOutputOfOtherInput(widget, p)
        p = types.SimpleNamespace(inputVolume=ctA, outputSegmentation=segA)
        self.assertFalse(forget(p))  # A's own result stays selected
        self.assertIs(p.outputSegmentation, segA)
        p.inputVolume = ctB
        self.assertTrue(forget(p))
        self.assertIsNone(p.outputSegmentation)
        # chosen by hand for B afterwards (the input did not change): kept
        p.outputSegmentation = segA
        self.assertFalse(forget(p))
        self.assertIs(p.outputSegmentation, segA)

    # -- device ----------------------------------------------------------------

    def test_gpu_warning_asks_the_driver_not_torch(self):
        gpu = sys.modules["KidneyTumorSegSlicer.gpu"]
        smi = "NVIDIA H100 80GB HBM3, 81559\nNVIDIA GeForce GT 1030, 2001\n"
        self.assertEqual(gpu.parseNvidiaSmi(smi), [("NVIDIA H100 80GB HBM3", 81559 / 1024), ("NVIDIA GeForce GT 1030", 2001 / 1024)])
        self.assertEqual(gpu.parseNvidiaSmi("garbage\n"), [])
        self.assertEqual(gpu.gpuMemoryWarning("auto", gpus=[("H100", 79.6)]), "")
        self.assertIn("(GT 1030) has 1.9 GiB of memory; at least 4 GiB", gpu.gpuMemoryWarning("cuda", gpus=[("GT 1030", 1.95)]))
        self.assertEqual(gpu.gpuMemoryWarning("auto", gpus=[]), "")  # no GPU: auto runs on the CPU
        self.assertIn("No NVIDIA GPU was found", gpu.gpuMemoryWarning("cuda", gpus=[]))
        self.assertEqual(self.logic.gpuMemoryWarning("cpu"), "")
        self.assertNotIn("torch", gpu.__dict__)

    # -- dependencies ----------------------------------------------------------

    def test_install_errors_name_what_to_install(self):
        """No PyTorch extension: say so (not "no internet"); pip failing offline: name the packages."""
        deps, util = self.dependencies, sys.modules["slicer.util"]
        shown, pip_args = [], []
        missing = [deps.TORCH_REQUIREMENT, "monai>=1.3,<1.7"]

        def pip_install(args):
            pip_args.append(list(args))
            raise RuntimeError("Could not find a version that satisfies the requirement monai")

        saved = (deps.missingRequirements, getattr(util, "errorDisplay", None), getattr(util, "pip_install", None))
        deps.missingRequirements = lambda: list(missing)
        util.errorDisplay = lambda text, **kw: shown.append(text)
        util.pip_install = pip_install
        try:
            sys.modules.pop("PyTorchUtils", None)  # the PyTorch extension is absent here
            self.assertFalse(deps.ensureDependencies(askConfirmation=False))
            self.assertIn("The PyTorch extension is not installed", shown[-1])
            self.assertNotIn("internet", shown[-1])
            missing.remove(deps.TORCH_REQUIREMENT)
            self.assertFalse(deps.ensureDependencies(askConfirmation=False))
            self.assertIn("no internet connection?", shown[-1])
            self.assertIn("slicer.util.pip_install(['monai>=1.3,<1.7'])", shown[-1])
            self.assertEqual(pip_args, [["--timeout", "20", "--retries", "1", "monai>=1.3,<1.7"]])
        finally:
            deps.missingRequirements, util.errorDisplay, util.pip_install = saved

    def test_requirements_are_checked_against_installed_versions(self):
        self.assertEqual(self.kts.KidneyTumorSegLogic.missingRequirements(), [])
        satisfied = self.dependencies.requirementSatisfied
        self.assertTrue(satisfied("numpy>=1.0"))
        self.assertFalse(satisfied("numpy>=999"))
        self.assertFalse(satisfied("no-such-distribution-kts>=1"))

    # -- models ------------------------------------------------------------------

    def test_model_problem_names_what_is_missing(self):
        self.assertIn("Select a model", self.logic.modelProblem(""))
        self.assertIn("has no manifest.json", self.logic.modelProblem(str(self.tmp)))

    def test_import_model_verifies_and_copies_the_bundle(self):
        import shutil

        from helpers_bundle import make_tiny_bundle
        from KidneyTumorSegLib.bundle import BundleError, load_bundle

        bundle = make_tiny_bundle(self.tmp / "src" / "mybundle")
        (bundle.path / "notes.txt").write_text("not part of the bundle")
        target = self.logic.importModel(str(bundle.path))
        self.assertEqual(target, self.logic.userModelsFolder() / "tiny-test")
        self.assertEqual(sorted(p.name for p in target.iterdir()), sorted(["manifest.json", *bundle.files]))
        self.assertEqual(load_bundle(target).files, bundle.files)
        self.assertIn(("tiny-test", str(target)), self.logic.availableModels())
        self.assertEqual(self.logic.modelProblem(str(target)), "")
        with self.assertRaises(FileExistsError):
            self.logic.importModel(str(bundle.path / "manifest.json"))
        archive = shutil.make_archive(str(self.tmp / "bundle"), "zip", str(bundle.path.parent))
        self.assertEqual(self.logic.importModel(archive, overwrite=True), target)
        # a corrupt weight file is refused and the imported copy stays as it was
        weight = bundle.path / sorted(bundle.files)[0]
        weight.write_bytes(weight.read_bytes()[:-8] + b"corrupt!")
        with self.assertRaises(BundleError) as caught:
            self.logic.importModel(str(bundle.path), overwrite=True)
        self.assertIn("SHA-256 mismatch", str(caught.exception))
        self.assertEqual(load_bundle(target).files, bundle.files)
        self.assertEqual([p.name for p in target.parent.iterdir()], ["tiny-test"])

    def test_installed_nnunet_models_are_listed_and_importable(self):
        import json
        import os

        import torch

        ts_home = self.tmp / "ts"
        model = (ts_home / "nnunet" / "results" / "Dataset291_TotalSegmentator_part1_organs" /
                 "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres")
        (model / "fold_0").mkdir(parents=True)
        (model / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "kidney_right": 2,
                                                                   "kidney_left": 3}}))
        (model / "plans.json").write_text("{}")
        torch.save({"network_weights": {}}, model / "fold_0" / "checkpoint_final.pth")
        saved = os.environ.get("TOTALSEG_HOME_DIR")
        os.environ["TOTALSEG_HOME_DIR"] = str(ts_home)
        try:
            listed = dict((path, label) for label, path in self.logic.availableModels())
            self.assertEqual(listed[str(model)], "TotalSegmentator: Dataset291_TotalSegmentator_part1_organs (3d_fullres)")
            self.assertEqual(self.logic.modelProblem(str(model)), "")
            # the panel's first choice: the real model on this machine, not the phantom demonstration
            self.assertEqual(self.logic.preferredModelPath(), str(model))
            target = self.logic.importModel(str(model))
            self.assertEqual(target.parent, self.logic.userModelsFolder())
            manifest = json.loads((target / "manifest.json").read_text())
            self.assertEqual([s["role"] for s in manifest["stages"]], ["kidney"])  # no tumor label: kidneys only
            self.assertEqual(manifest["stages"][0]["nnunet"]["path"], str(model.resolve()))
            self.assertIn((target.name, str(target)), self.logic.availableModels())
            os.environ["TOTALSEG_HOME_DIR"] = str(self.tmp / "nothing-here")
            self.assertEqual(self.logic.preferredModelPath(), self.logic.defaultModelPath())
        finally:
            if saved is None:
                os.environ.pop("TOTALSEG_HOME_DIR", None)
            else:
                os.environ["TOTALSEG_HOME_DIR"] = saved

    # -- runs --------------------------------------------------------------------

    def _phantom_node(self):
        import numpy as np
        from KidneyTumorSegLib.phantom import make_phantom

        phantom = make_phantom(5, shape=(32, 96, 96), spacing=(3.5, 3.5, 5.0), n_tumors=1)
        image = phantom.image
        ijk_to_ras = np.eye(4)
        lps_to_ras = np.diag([-1.0, -1.0, 1.0])
        ijk_to_ras[:3, :3] = lps_to_ras @ np.asarray(image.direction).reshape(3, 3) @ np.diag(image.spacing)
        ijk_to_ras[:3, 3] = lps_to_ras @ np.asarray(image.origin)
        return phantom, _VolumeNode(image.array, ijk_to_ras)

    def _run_to_end(self, run, seconds=180):
        import time

        deadline = time.time() + seconds
        while run.status == "running" and time.time() < deadline:
            run.timer.fire()
            time.sleep(0.1)
        self.assertNotEqual(run.status, "running", "the background run did not finish")

    @unittest.skipUnless(_has_module("KidneyTumorSegLib.background") and _has_module("KidneyTumorSegLib.slicer_geometry"),
                         "needs KidneyTumorSegLib.background and .slicer_geometry")
    def test_async_run_exports_the_input_and_delivers_outputs_on_its_grid(self):
        import json

        import numpy as np
        import SimpleITK as sitk
        from helpers_bundle import make_tiny_bundle

        bundle = make_tiny_bundle(self.tmp / "fg", fg_bias=8.0).path
        phantom, node = self._phantom_node()
        # an ROI turned 90 degrees about S: its x axis points anterior, so its 40 mm run along P in LPS
        roi_to_world = np.eye(4)
        roi_to_world[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
        roi_to_world[:3, 3] = (0.0, -50.0, -200.0)
        roi = _RoiNode(roi_to_world, (40.0, 60.0, 60.0))
        delivered = {}
        self.logic._loadResults = lambda run, outputs: delivered.update(
            {k: (Path(v), Path(v).read_bytes()) for k, v in outputs.items()})
        progress, finished = [], []
        run = self.logic.startSegmentation(node, model=str(bundle), device="cpu", roiNode=roi,
                                           progressCallback=lambda f, text: progress.append((f, text)),
                                           finishCallback=finished.append)
        self.assertTrue(run.timer.active)
        self._run_to_end(run)
        self.assertEqual(run.status, "done", run.error)
        self.assertEqual(finished, [run])
        self.assertFalse(run.workDir.exists(), "the temporary folder is removed")
        self.assertTrue({"segmentation", "report", "candidates"} <= set(delivered))
        fractions = [f for f, _ in progress]
        self.assertTrue(fractions and fractions == sorted(fractions) and fractions[-1] <= 1.0)
        self.assertTrue(any(text.startswith("Segmenting kidneys") for _, text in progress))
        report = json.loads(delivered["report"][1])
        self.assertIn("region of interest given by the user; stage 1 skipped", report["messages"])
        lo, hi = np.asarray(report["roi_lps_mm"])
        want_lo, want_hi = np.array([-30.0, 30.0, -230.0]), np.array([30.0, 70.0, -170.0])
        self.assertTrue(np.all(lo <= want_lo + 1e-3) and np.all(hi >= want_hi - 1e-3), (lo, hi))
        self.assertTrue(np.all(want_lo - lo <= 10.0) and np.all(hi - want_hi <= 10.0), (lo, hi))
        # the label map came back on the phantom's own grid (RAS -> LPS export round trip)
        path, data = delivered["label"]
        label_path = self.tmp / path.name
        label_path.write_bytes(data)
        label = sitk.ReadImage(str(label_path))
        np.testing.assert_allclose(label.GetOrigin(), phantom.image.origin, atol=1e-4)
        np.testing.assert_allclose(label.GetSpacing(), phantom.image.spacing, atol=1e-6)
        np.testing.assert_allclose(label.GetDirection(), phantom.image.direction, atol=1e-6)
        self.assertEqual(sitk.GetArrayFromImage(label).shape, phantom.image.array.shape)

    @unittest.skipUnless(_has_module("KidneyTumorSegLib.slicer_geometry"), "needs KidneyTumorSegLib.slicer_geometry")
    def test_quality_sets_the_test_time_augmentations_and_an_unknown_one_is_refused(self):
        import shutil

        from helpers_bundle import make_tiny_bundle

        bundle = str(make_tiny_bundle(self.tmp / "q").path)
        _, node = self._phantom_node()
        self.assertEqual([q.value for q in self.kts.Quality], ["fast", "balanced", "full"])
        self.assertEqual(self.kts.Quality.BALANCED.label(), "Balanced (4 test-time flips)")
        for quality, tta in (("fast", 1), ("balanced", 4), ("full", 12), (self.kts.Quality.BALANCED, 4)):
            with self.subTest(quality=quality):
                run = self.logic._prepareRun(node, bundle, "cpu", quality, 0.8, 2, None, None, False)
                try:
                    self.assertEqual(run.options["tta"], tta)
                    self.assertTrue((run.workDir / "input.nrrd").is_file())
                finally:
                    shutil.rmtree(run.workDir)
        tmp = Path(self.kts.slicer.app.temporaryPath)
        before = sorted(tmp.iterdir()) if tmp.exists() else []
        with self.assertRaises(ValueError) as caught:
            self.logic._prepareRun(node, bundle, "cpu", "best", 0.8, 2, None, None, False)
        self.assertEqual(str(caught.exception), "quality must be 'fast', 'balanced' or 'full', not 'best'")
        self.assertEqual(sorted(tmp.iterdir()) if tmp.exists() else [], before, "nothing is written for a refused run")

    @unittest.skipUnless(_has_module("KidneyTumorSegLib.background") and _has_module("KidneyTumorSegLib.slicer_geometry"),
                         "needs KidneyTumorSegLib.background and .slicer_geometry")
    def test_tumor_growth_choice_reaches_the_core_and_an_unknown_one_is_refused(self):
        import json
        import shutil

        from helpers_bundle import make_tiny_bundle
        from KidneyTumorSegLib.background import run_segmentation
        from KidneyTumorSegLib.config import PostprocessConfig

        # a model shipped with one growth pass, as the default model is
        post = PostprocessConfig(tumor_growth_passes=1, tumor_growth_mm=13.0)
        bundle = str(make_tiny_bundle(self.tmp / "g", fg_bias=8.0, post=post).path)
        _, node = self._phantom_node()
        self.assertEqual([g.value for g in self.kts.TumorGrowth], ["model", "off", "1", "2", "3"])
        self.assertEqual(self.kts.TumorGrowth.MODEL.label(), "Model's setting")
        self.assertEqual(self.kts.KidneyTumorSegParameterNode.__annotations__["tumorGrowth"], self.kts.TumorGrowth)
        cases = ((None, []), (self.kts.TumorGrowth.MODEL, []), ("off", ["--tumor-growth", "0"]),
                 (self.kts.TumorGrowth.TWO, ["--tumor-growth", "2"]), (5, ["--tumor-growth", "5"]))
        for choice, args in cases:
            with self.subTest(choice=choice):
                run = self.logic._prepareRun(node, bundle, "cpu", "fast", 0.8, 2, None, None, False, choice)
                try:
                    self.assertEqual(run.options["extra_args"], args)
                    if choice == "off" or choice is None:
                        # the core runs with it: the report names the growth setting it ran with
                        outputs = run_segmentation(**run.options)
                        report = json.loads(Path(outputs["report"]).read_text())
                        self.assertEqual(report["tumor_growth"], {"passes": 0 if choice == "off" else 1, "mm": 13.0})
                finally:
                    shutil.rmtree(run.workDir)
        tmp = Path(self.kts.slicer.app.temporaryPath)
        before = sorted(tmp.iterdir()) if tmp.exists() else []
        for bad in ("always", 9, -1, True):
            with self.subTest(bad=bad), self.assertRaises(ValueError) as caught:
                self.logic._prepareRun(node, bundle, "cpu", "fast", 0.8, 2, None, None, False, bad)
            self.assertEqual(str(caught.exception), "tumorGrowth must be None (the model's setting), 'off' or a number "
                                                    f"of passes from 0 to 8, not {bad!r}")
        self.assertEqual(sorted(tmp.iterdir()) if tmp.exists() else [], before, "nothing is written for a refused run")

    @unittest.skipUnless(_has_module("KidneyTumorSegLib.background") and _has_module("KidneyTumorSegLib.slicer_geometry"),
                         "needs KidneyTumorSegLib.background and .slicer_geometry")
    def test_failed_run_reports_the_core_message_and_cancel_stops_the_process(self):
        from helpers_bundle import make_tiny_bundle

        _, node = self._phantom_node()
        self.logic._loadResults = lambda run, outputs: self.fail("nothing may be loaded")
        empty = make_tiny_bundle(self.tmp / "bg", fg_bias=-8.0).path
        run = self.logic.startSegmentation(node, model=str(empty), device="cpu")
        self._run_to_end(run)
        self.assertEqual(run.status, "failed")
        self.assertIn("no kidney found", run.error)
        self.assertFalse(run.workDir.exists())

        finished = []
        run = self.logic.startSegmentation(node, model=str(empty), device="cpu", finishCallback=finished.append)
        run.timer.fire()
        self.logic.cancel(run)
        self.assertEqual(run.status, "cancelled")
        self.assertEqual(finished, [run])
        self.assertFalse(run.timer.active)
        self.assertFalse(run.process.running)
        self.assertFalse(run.workDir.exists())
        self.logic.cancel(run)  # a second cancel changes nothing
        self.assertEqual(finished, [run])

    def test_candidate_edits_move_voxels_between_tumor_and_nearest_kidney(self):
        import numpy as np

        shape = (5, 6, 40)
        left, right, tumor = (np.zeros(shape, bool) for _ in range(3))
        left[:, :, :3] = True
        right[:, :, 37:] = True
        tumor[:, :, 3:9] = True  # a kept tumor on the left kidney's edge
        rejected = np.zeros(shape, bool)
        rejected[:, 2:4, 30:37] = True  # a rejected candidate: kidney voxels of the right kidney
        right |= rejected
        arrays = {"kidney_left": left, "kidney_right": right, "kidney_tumor": tumor}
        kidneys = ["kidney_left", "kidney_right"]
        spacing = (3.0, 1.0, 1.0)

        removed = self.candidates.candidateUpdates(arrays, tumor, False, "kidney_tumor", kidneys, spacing)
        self.assertFalse(removed["kidney_tumor"].any())
        self.assertTrue((removed["kidney_left"] == (left | tumor)).all())  # far from the right kidney
        self.assertTrue((removed["kidney_right"] == right).all())

        added = self.candidates.candidateUpdates(arrays, rejected, True, "kidney_tumor", kidneys, spacing)
        self.assertTrue((added["kidney_tumor"] == (tumor | rejected)).all())
        self.assertTrue((added["kidney_right"] == (right & ~rejected)).all())
        self.assertTrue((added["kidney_left"] == left).all())
        total = sum(a.astype(int) for a in added.values())
        self.assertLessEqual(int(total.max()), 1, "no voxel in two segments")

        # a tumor between both kidneys is split by distance, also when the box must grow to find them
        right_only = right & ~rejected
        for cols in (slice(3, 37), slice(15, 25)):  # touching both kidneys; too far for the box's margin
            between = np.zeros(shape, bool)
            between[:, :, cols] = True
            split = self.candidates.assignToNearestKidney(between, {"l": left, "r": right_only}, (1.0, 1.0, 1.0), margin=2)
            near_left = between.copy()
            near_left[:, :, 20:] = False  # column 19.5 is as far from both
            self.assertTrue((split["l"] == (left | near_left)).all(), cols)
            self.assertTrue((split["r"] == (right_only | (between & ~near_left))).all(), cols)

    def test_report_follows_the_edit(self):
        report = {"tumor_candidates": [{"id": 1, "volume_ml": 30.0, "kept": True},
                                       {"id": 2, "volume_ml": 1.5, "kept": False}], "kept_tumors": 1}
        edited = self.candidates.reportWithKept(report, {2}, 1, False)
        self.assertEqual([c["kept"] for c in edited["tumor_candidates"]], [False, True])
        self.assertEqual((edited["kept_tumors"], edited["total_tumor_volume_ml"]), (1, 1.5))
        self.assertEqual(edited["manual_changes"], [{"candidate": 1, "kept": False}])
        self.assertTrue(report["tumor_candidates"][0]["kept"], "the input report is not changed")

    def test_findings_table_rows_and_selected_candidate(self):
        import vtk

        class TableNode:
            def __init__(self):
                self.attributes = {}
                self.locked = False

            def StartModify(self):
                return 0

            def EndModify(self, was):
                pass

            def SetAndObserveTable(self, table):
                self.table = table

            def SetAttribute(self, name, value):
                self.attributes[name] = value

            def GetAttribute(self, name):
                return self.attributes.get(name)

            def SetLocked(self, locked):
                self.locked = locked

            def SetUseColumnNameAsColumnHeader(self, use):
                self.column_names_as_header = use

        report = {
            "kidneys": [{"index": 0, "side": "left", "volume_ml": 151.234}, {"index": 1, "side": "right", "volume_ml": 160.0}],
            "tumor_candidates": [
                {"id": 2, "kidney_index": 1, "side": "right", "volume_ml": 1.5, "axial_diameter_mm": 12.0,
                 "diameter_3d_mm": 14.0, "mean_probability": 0.55, "kept": False},
                {"id": 1, "kidney_index": 0, "side": "left", "volume_ml": 30.0, "axial_diameter_mm": 40.0,
                 "diameter_3d_mm": 45.0, "mean_probability": 0.93, "kept": True},
            ],
        }
        node = TableNode()
        self.results.writeFindings(node, report)
        table = node.table
        self.assertTrue(node.locked)
        # the view's rows are the table's rows (no header row in the model): selection maps 1:1
        self.assertTrue(node.column_names_as_header)
        self.assertEqual(table.GetNumberOfRows(), 4)
        names = [table.GetColumn(c).GetName() for c in range(table.GetNumberOfColumns())]
        self.assertIn("Volume (mL)", names)
        volume = table.GetColumnByName("Volume (mL)")
        self.assertIsInstance(volume, vtk.vtkDoubleArray)  # complete numeric column
        self.assertAlmostEqual(volume.GetValue(0), 151.23)
        probability = table.GetColumnByName("Mean probability")
        self.assertIsInstance(probability, vtk.vtkStringArray)  # kidney rows leave it empty
        self.assertEqual([probability.GetValue(r) for r in range(4)], ["", "", "0.93", "0.55"])
        self.assertIsNone(self.kts.KidneyTumorSegLogic.candidateOfRow(node, 0))
        self.assertEqual(self.kts.KidneyTumorSegLogic.candidateOfRow(node, 2), {"id": 1, "kept": True})
        self.assertEqual(self.kts.KidneyTumorSegLogic.candidateOfRow(node, 3), {"id": 2, "kept": False})
        self.assertIsNone(self.kts.KidneyTumorSegLogic.candidateOfRow(node, 4))
