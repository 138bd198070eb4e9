"""The flat module paths of version 0.1, kept importable after the move into subpackages.

``from KidneyTumorSegLib.volume_io import read_volume`` (a user's script written
for 0.1) still works: ``KidneyTumorSegLib.volume_io`` is a stand-in module that
imports ``KidneyTumorSegLib.io.volume_io`` when one of its names is first used,
hands that name over, and warns (``DeprecationWarning``) with the new path. The
project's own code and tests use the new paths: the test suite turns this
warning into an error.
"""
from __future__ import annotations

import importlib
import sys
import types
import warnings

# old module (relative to the package) -> where it lives now
MOVED = {
    "atomic": "io.atomic",
    "jsonfile": "io.jsonfile",
    "volume_io": "io.volume_io",
    "formats": "io.formats",
    "dicom_checks": "io.dicom_checks",
    "cases": "io.cases",
    "validate": "io.validate",
    "writers": "io.writers",
    "outputs": "io.outputs",
    "case_folder": "io.case_folder",
    "preview": "io.preview",
    "masks": "geometry.masks",
    "volume": "geometry.volume",
    "slicer_geometry": "geometry.slicer_geometry",
    "networks": "engine.networks",
    "inference": "engine.inference",
    "tta": "engine.tta",
    "device": "engine.device",
    "intensity": "engine.intensity",
    "reference": "engine.reference",
    "nnunet_model": "engine.nnunet_model",
    "nnunet_stage": "engine.nnunet_stage",
    "bundle": "bundles.bundle",
    "bundle_checks": "bundles.bundle_checks",
    "bundle_weights": "bundles.bundle_weights",
    "nnunet_bundle": "bundles.nnunet_bundle",
    "nnunet_folder": "bundles.nnunet_folder",
    "nnunet_labels": "bundles.nnunet_labels",
    "findings_table": "findings.findings_table",
    "measure": "findings.measure",
    "terminology": "findings.terminology",
    "plausibility": "findings.plausibility",
    "phantom_body": "phantom.phantom_body",
    "phantom_draw": "phantom.phantom_draw",
    "phantom_field": "phantom.phantom_field",
    "phantom_info": "phantom.phantom_info",
    "phantom_io": "phantom.phantom_io",
    "phantom_kidney": "phantom.phantom_kidney",
    "phantom_kits": "phantom.phantom_kits",
    "phantom_make": "phantom.phantom_make",
    "phantom_organs": "phantom.phantom_organs",
    "phantom_params": "phantom.phantom_params",
    "phantom_place": "phantom.phantom_place",
    "phantom_render": "phantom.phantom_render",
    "sample": "phantom.sample",
    "evaluate": "evaluation.evaluate",
    "metrics": "evaluation.metrics",
}


class _Moved(types.ModuleType):
    """Stands in for a moved module: each name is looked up in the module it moved to."""

    def __init__(self, old: str, new: str) -> None:
        super().__init__(old, f"Moved to {new}.")
        self.__moved_to__ = new

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        warnings.warn(f"{self.__name__} moved to {self.__moved_to__}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(self.__moved_to__), name)


def install(package: str) -> None:
    """Register a stand-in for each moved module of ``package`` (cheap: nothing is imported)."""
    for old, new in MOVED.items():
        sys.modules.setdefault(f"{package}.{old}", _Moved(f"{package}.{old}", f"{package}.{new}"))
