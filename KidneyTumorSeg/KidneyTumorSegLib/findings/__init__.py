"""What a segmentation found and how it is described: kidneys, candidates, measurements, tables.

``findings`` (``CascadeResult``, kidneys, tumor candidates, accepting and
rejecting a candidate), ``measure`` (volumes and diameters),
``terminology`` (segment names, colours, SNOMED CT codes, label values),
``findings_table`` (the per-tumor table of the report and the Slicer panel),
``plausibility`` (when a result should not be trusted).

The names of version 0.1's ``findings`` module (``CascadeResult``,
``apply_candidate_choice`` ...) are importable from here too, loaded on first use.
"""
from .._lazy import lazy_names

_NAMES = {name: "findings" for name in (
    "Kidney", "Candidate", "CascadeResult", "segment_map", "apply_candidate_choice", "choose_candidate",
    "assign_to_nearest")}

__getattr__ = lazy_names(__name__, _NAMES)
