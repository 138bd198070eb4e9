"""Checks of the 3D Slicer module's files that need no Slicer.

The module (``KidneyTumorSeg/KidneyTumorSeg.py``) and its Slicer-side helpers
(``KidneyTumorSeg/KidneyTumorSegSlicer/``) import ``slicer``, so they are read
as text and AST here: their ``self.ui.<name>`` widgets exist in the .ui, the
parameter-node fields and the .ui's ``SlicerParameterName`` properties match
one to one (with widget types the parameter-node wrapper can bind), every file
compiles and parses as Python 3.9 and stays small, and the CMake lists name every
file. The module's scripting API is checked against stand-ins for ``slicer`` and
``qt`` (slicer_stubs.py, real vtk); each helper's Slicer-free paths are checked
the same way in test_slicer_<helper>.py.

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

from slicer_stubs import StubbedModuleTest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "KidneyTumorSeg"
MODULE_FILE = MODULE_DIR / "KidneyTumorSeg.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "KidneyTumorSeg.ui"
ICON_FILE = MODULE_DIR / "Resources" / "Icons" / "KidneyTumorSeg.png"
LIB_DIR = MODULE_DIR / "KidneyTumorSegLib"
SLICER_DIR = MODULE_DIR / "KidneyTumorSegSlicer"  # the module's Slicer-side helpers
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
    """Enum classes the module defines, and those it imports from the core's presets (the panel's choices)."""
    import enum
    import importlib

    tree = _module_tree()
    names = {n.name for n in tree.body if isinstance(n, ast.ClassDef)
             and any(getattr(b, "attr", getattr(b, "id", "")) == "Enum" for b in n.bases)}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "KidneyTumorSegLib.presets":
            presets = importlib.import_module(node.module)
            names |= {a.asname or a.name for a in node.names
                      if isinstance(getattr(presets, a.name), type) and issubclass(getattr(presets, a.name), enum.Enum)}
    return names


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
    MAX_MODULE_LINES = 600
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
        # candidateThreshold and keepComponents: None, the model's own value (the shipped model's: 0.8 and 2)
        self.assertEqual(defaults, [None, "auto", "fast", None, None, None, None])

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


@unittest.skipIf(_in_slicer(), "the real Slicer is running: KidneyTumorSegTest covers the logic")
class ModuleLogicTest(StubbedModuleTest):
    """The module's names that scripts use, with the module imported against the stand-ins."""

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

        sampledata = self.helper("sampledata")
        # the background process imports KidneyTumorSegLib from the module's folder
        self.assertEqual(self.runs.processEnvironment()["PYTHONPATH"].split(os.pathsep)[0], str(MODULE_DIR))
        self.assertTrue((Path(sampledata._ICONS_PATH) / ICON_FILE.name).is_file())
