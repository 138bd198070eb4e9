"""KidneyTumorSeg core: kidney and kidney-tumor segmentation in abdominal CT.

Imports no ``slicer``, ``qt``, ``ctk`` or ``vtk``: the same code serves the
3D Slicer module, the ``kidneytumorseg`` command line, training and tests.

Subpackages, by job: ``io`` (reading and writing scans, label maps,
reports; atomic output), ``geometry`` (the ``Volume`` type, reorientation,
crops, resampling, boxes, masks, Slicer's RAS), ``engine`` (networks,
sliding window, test-time augmentation, predictors, devices), ``bundles``
(model bundles, nnU-Net model folders), ``cascade`` (the four stages),
``findings`` (kidneys, candidates, measurements, terminology, tables,
plausibility), ``phantom`` (synthetic CTs), ``evaluation`` (Dice and
KiTS metrics). The command line, the run settings, the event stream and the
background process that the Slicer module starts sit at the top.

The public names are importable from here (``from KidneyTumorSegLib import
Segmenter``); they load their module on first use, so importing the package
stays cheap. Module paths inside the subpackages may change between
versions; the flat module paths of version 0.1 (``KidneyTumorSegLib.volume_io``
...) still import, with a ``DeprecationWarning`` (see :mod:`._moved`).
"""
from ._lazy import lazy_names

from ._moved import install as _install_moved

__version__ = "0.1.0"

# public name -> the module (relative to this package) that defines it
_PUBLIC = {
    "Segmenter": "pipeline",
    "RuntimeConfig": "config",
    "RunSettings": "run_settings",
    "PostprocessConfig": "config",
    "StageConfig": "config",
    "Volume": "geometry.volume",
    "InputError": "geometry.volume",
    "RoiWorld": "geometry.volume",
    "read_volume": "io.volume_io",
    "read_label": "io.volume_io",
    "validate_ct": "io.validate",
    "write_labelmap": "io.writers",
    "write_seg_nrrd": "io.writers",
    "write_json": "io.jsonfile",
    "run_cascade": "cascade.run",
    "kidney_crop": "cascade.crop",
    "CascadeResult": "findings.findings",
    "apply_candidate_choice": "findings.findings",
    "findings_rows": "findings.findings_table",
    "Bundle": "bundles.bundle",
    "BundleError": "bundles.bundle",
    "load_bundle": "bundles.bundle",
    "save_bundle": "bundles.bundle",
    "default_bundle_path": "bundles.bundle",
    "import_model": "bundles.nnunet_bundle",
    "make_phantom": "phantom.phantom_make",
    "write_phantom_cases": "phantom.phantom_io",
    "evaluate": "evaluation.evaluate",
    "case_metrics": "evaluation.metrics",
    "volume_from_slicer": "geometry.slicer_geometry",
    "ijk_to_ras_from_volume": "geometry.slicer_geometry",
    "roi_from_slicer": "geometry.slicer_geometry",
    "SegmentationProcess": "background",
    "run_segmentation": "background",
}
__all__ = sorted(_PUBLIC) + ["__version__"]

__getattr__ = lazy_names(__name__, _PUBLIC)


def __dir__():
    return __all__


_install_moved(__name__)
