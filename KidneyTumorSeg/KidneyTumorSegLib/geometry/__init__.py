"""Where voxels are: the ``Volume`` type, and every step that moves voxels between grids.

``volume`` (a 3D array with spacing, origin and direction in LPS; ``InputError``),
``records`` (reorientation, crops and resampling as records that undo exactly),
``boxes`` (index boxes), ``masks`` (largest components, dilation in mm),
``slicer_geometry`` (Slicer's RAS and IJK-to-RAS matrices to ``Volume`` and back).

The names of version 0.1's ``geometry`` module (``Crop``, ``canonical_reorient``,
``box_from_mask`` ...) are importable from here too; they load their module on
first use, so ``volume``, ``boxes`` and ``slicer_geometry`` stay free of torch.
"""
from .._lazy import lazy_names

_NAMES = {
    "Reorient": "records", "canonical_reorient": "records", "Crop": "records", "Resample": "records",
    "resample_record": "records", "MAX_RESAMPLED_VOXELS": "records",
    "Box": "boxes", "box_from_mask": "boxes", "box_slices": "boxes", "expand_box": "boxes",
}

__getattr__ = lazy_names(__name__, _NAMES)
