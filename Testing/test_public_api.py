"""The public names stay importable from ``KidneyTumorSegLib``; 0.1's flat module paths still import, with a warning."""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import KidneyTumorSegLib
from KidneyTumorSegLib._moved import MOVED


@pytest.mark.parametrize("name", sorted(KidneyTumorSegLib._PUBLIC))
def test_every_public_name_is_importable_from_the_package(name):
    value = getattr(KidneyTumorSegLib, name)
    assert value.__module__ == f"KidneyTumorSegLib.{KidneyTumorSegLib._PUBLIC[name]}", name


SUBPACKAGES = ("bundles", "cascade", "engine", "evaluation", "findings", "geometry", "io", "phantom")


def test_importing_the_package_loads_no_module_of_it_and_no_torch():
    code = ("import sys, KidneyTumorSegLib\n"
            "loaded = sorted(m for m in sys.modules if m.startswith('KidneyTumorSegLib.')"
            " and m not in ('KidneyTumorSegLib._moved', 'KidneyTumorSegLib._lazy')"
            " and type(sys.modules[m]).__name__ != '_Moved')\n"
            "print(loaded); sys.exit(1 if loaded or 'torch' in sys.modules else 0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_flat_module_path_of_version_0_1_still_imports_with_a_warning():
    from KidneyTumorSegLib.io import volume_io

    with pytest.warns(DeprecationWarning, match=r"^KidneyTumorSegLib\.volume_io moved to KidneyTumorSegLib\.io\.volume_io$"):
        from KidneyTumorSegLib.volume_io import read_volume
    assert read_volume is volume_io.read_volume
    with pytest.warns(DeprecationWarning, match="KidneyTumorSegLib.bundle moved to KidneyTumorSegLib.bundles.bundle"):
        import KidneyTumorSegLib.bundle as old_bundle
        assert old_bundle.load_bundle is KidneyTumorSegLib.load_bundle


def test_every_moved_module_exists_where_it_moved():
    import importlib

    for old, new in MOVED.items():
        assert importlib.import_module(f"KidneyTumorSegLib.{new}").__name__ == f"KidneyTumorSegLib.{new}", old


def test_modules_that_became_packages_keep_their_names():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # these are the new paths too: no warning
        from KidneyTumorSegLib.findings import CascadeResult, apply_candidate_choice  # noqa: F401
        from KidneyTumorSegLib.geometry import Crop, box_from_mask, canonical_reorient  # noqa: F401
        from KidneyTumorSegLib.phantom import make_phantom, write_phantom_cases  # noqa: F401
        from KidneyTumorSegLib.cascade import kidney_crop, run_cascade  # noqa: F401
    assert Crop.__module__ == "KidneyTumorSegLib.geometry.records"
    assert box_from_mask.__module__ == "KidneyTumorSegLib.geometry.boxes"
    with pytest.raises(ImportError, match="no_such_name"):
        from KidneyTumorSegLib.geometry import no_such_name  # noqa: F401


def test_importing_a_subpackage_loads_no_torch():
    """Each subpackage's __init__ only names its modules; the Slicer process imports some of them."""
    code = ("import sys, importlib\n"
            f"for p in {SUBPACKAGES!r}: importlib.import_module('KidneyTumorSegLib.' + p)\n"
            "sys.exit(1 if 'torch' in sys.modules else 0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    on_disk = sorted(p.parent.name for p in Path(KidneyTumorSegLib.__file__).parent.glob("*/__init__.py"))
    assert on_disk == sorted(SUBPACKAGES)


def test_no_name_a_package_hands_out_is_also_one_of_its_modules():
    """Once a submodule is imported, the package's attribute of that name is the module, not the lazy name
    (``cascade.kidney_crop`` was both, and ``from cascade import kidney_crop`` then gave the module)."""
    import importlib

    root = Path(KidneyTumorSegLib.__file__).parent
    for pkg, names in [("", KidneyTumorSegLib._PUBLIC)] + [
            (p, getattr(importlib.import_module(f"KidneyTumorSegLib.{p}"), "_NAMES", {})) for p in SUBPACKAGES]:
        folder = root / pkg
        modules = {m.stem for m in folder.glob("*.py")} | {d.name for d in folder.iterdir() if (d / "__init__.py").is_file()}
        assert not set(names) & modules, (pkg, set(names) & modules)
    importlib.import_module("KidneyTumorSegLib.cascade.crop")  # the submodule loaded first, as training does
    from KidneyTumorSegLib.cascade import kidney_crop

    assert callable(kidney_crop) and kidney_crop.__name__ == "kidney_crop"
