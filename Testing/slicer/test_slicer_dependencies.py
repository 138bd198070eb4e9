"""The module's dependencies (KidneyTumorSegSlicer/dependencies.py): the same bounds as pyproject.toml,
PyTorch through its extension, and install errors that say what to install (stand-ins: slicer_stubs.py)."""
from __future__ import annotations

import ast
import re
import sys
import unittest
from typing import List

from slicer_harness import ROOT
from slicer_stubs import SLICER_DIR, StubbedModuleTest

DEPENDENCIES_FILE = SLICER_DIR / "dependencies.py"


def _dependency_constant(name: str):
    tree = ast.parse(DEPENDENCIES_FILE.read_text(encoding="utf-8"), filename=str(DEPENDENCIES_FILE))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in {DEPENDENCIES_FILE.name}")


def _pyproject_dependencies() -> List[str]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib  # novermin (Python 3.11+; the ImportError below covers older ones)
    except ImportError:
        tomllib = None
    if tomllib is not None:
        return list(tomllib.loads(text)["project"]["dependencies"])
    block = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.S | re.M)
    return re.findall(r'"([^"]+)"', block.group(1))


class DependencyTest(unittest.TestCase):
    def test_module_requirements_match_pyproject(self):
        module = set(_dependency_constant("CORE_REQUIREMENTS")) | {_dependency_constant("TORCH_REQUIREMENT")}
        pyproject = set(_pyproject_dependencies())
        self.assertEqual(sorted(module - pyproject), [], "in the module but not in pyproject.toml")
        self.assertEqual(sorted(pyproject - module), [], "in pyproject.toml but not in the module")

    def test_torch_is_installed_through_the_pytorch_extension(self):
        self.assertNotIn(_dependency_constant("TORCH_REQUIREMENT"), _dependency_constant("CORE_REQUIREMENTS"))
        self.assertIn("PyTorchUtils.PyTorchUtilsLogic()", DEPENDENCIES_FILE.read_text(encoding="utf-8"))


class DependenciesWithoutSlicerTest(StubbedModuleTest):
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
