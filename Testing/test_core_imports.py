"""The core must not import Slicer, Qt, CTK or VTK (it runs without Slicer)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "KidneyTumorSeg" / "KidneyTumorSegLib"
FORBIDDEN = {"slicer", "qt", "ctk", "vtk", "vtkmodules", "mrml"}


def test_core_source_imports_no_gui_toolkit():
    offenders = []
    for py in sorted(CORE.rglob("*.py")):
        tree = ast.parse(py.read_text(encoding="utf-8"), filename=str(py))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for n in names:
                if n.split(".")[0].lower() in FORBIDDEN:
                    offenders.append(f"{py.name}:{node.lineno} imports {n}")
    assert not offenders, offenders
    assert len(list(CORE.rglob("*.py"))) > 10


def test_importing_every_core_module_loads_no_gui_toolkit():
    mods = sorted(".".join(p.relative_to(CORE).with_suffix("").parts) for p in CORE.rglob("*.py")
                  if p.stem not in ("__init__", "__main__"))
    code = (
        "import sys, importlib\n"
        f"for m in {mods!r}: importlib.import_module('KidneyTumorSegLib.' + m)\n"
        f"bad = [m for m in sys.modules if m.split('.')[0].lower() in {sorted(FORBIDDEN)!r}]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_core_and_training_parse_as_python_39():
    """Slicer 5.8 runs Python 3.9: no newer syntax (match, parenthesised context managers...)."""
    roots = [CORE, CORE.parents[1] / "training" / "ktstrain"]
    for root in roots:
        for py in sorted(root.rglob("*.py")):
            ast.parse(py.read_text(encoding="utf-8"), filename=str(py), feature_version=(3, 9))
            # annotations are evaluated lazily everywhere, so "X | None" and "list[int]" stay harmless on 3.9
            text = py.read_text(encoding="utf-8")
            if "def " in text and py.name not in ("__init__.py", "__main__.py"):
                assert "from __future__ import annotations" in text or "->" not in text, py


def test_modules_the_slicer_process_imports_do_not_load_torch():
    """Slicer's own process only converts geometry, runs the core in a subprocess and reads events."""
    code = (
        "import sys\n"
        "import KidneyTumorSegLib.geometry.slicer_geometry, KidneyTumorSegLib.background, KidneyTumorSegLib.findings.findings_table\n"
        "import KidneyTumorSegLib.events, KidneyTumorSegLib.findings.terminology, KidneyTumorSegLib.phantom.sample\n"
        "sys.exit(1 if 'torch' in sys.modules else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, "torch was imported: " + out.stderr
