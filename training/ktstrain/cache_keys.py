"""What names a stage cache and its entries: the preprocessing options, the cache key and the case fingerprint.

The key hashes the stage fields that shape the cache, the options and
:data:`PREPROCESS_VERSION`; the fingerprint hashes the case files' sizes and
modification times (see :mod:`ktstrain.preprocess` for the cache layout).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Union

from KidneyTumorSegLib.config import StageConfig

from .data import Case, LabelMap

PathLike = Union[str, Path]
# Bump when the preprocessing changes in a way the key fields cannot see.
PREPROCESS_VERSION = 1
CACHE_FORMAT = "ktstrain-stage-cache"
# Location classes stored per item (on the stored, resampled label).
LOCATION_CLASSES = ("fg", "kidney", "tumor", "cyst")


@dataclass(frozen=True)
class PreprocessOptions:
    """Settings of the preprocessing that are not part of a stage configuration.

    ``kidney_extra_margin_mm``: added to ``stage.margin_mm`` around the
    kidney stage's box so the sampler can jitter the margin.
    ``max_kidneys``/``min_kidney_ml``: tumor stage, the largest components
    of label > 0 kept as kidneys (the largest one always).
    ``label_interpolation``: ``linear`` (per class, >= 0.5) or ``nearest``.
    ``tumor_mask_extra_mm``: tumor stage, when > 0 each kidney gets a second
    item whose mask (and crop) is dilated by this much more, so the network
    also sees what an over-reaching kidney mask lets in at inference (bowel,
    liver, spleen beside the kidney) and learns that it is no tumor.
    ``tumor_mask_cut_mm``: tumor stage, when > 0 each kidney with tumor gets
    another item whose mask holds the kidney but only the part of the tumor
    within a random 0 to this many mm of the kidney parenchyma, as stage 2
    gives at inference when it misses an exophytic tumor's outer part; the
    label is cleared outside the mask as for every item, so the network
    learns that tumor can run up to the mask's edge (which growth passes
    then follow) instead of stopping short of it.
    """

    kidney_extra_margin_mm: float = 30.0
    max_kidneys: int = 2
    min_kidney_ml: float = 5.0
    label_interpolation: str = "linear"
    locations_per_class: int = 10000
    intensity_samples: int = 10000
    tumor_mask_extra_mm: float = 0.0
    tumor_mask_cut_mm: float = 0.0
    label_map: LabelMap = field(default_factory=LabelMap)

    def __post_init__(self) -> None:
        if self.label_interpolation not in ("linear", "nearest"):
            raise ValueError(f"label_interpolation must be 'linear' or 'nearest', got {self.label_interpolation!r}")
        if not self.tumor_mask_extra_mm >= 0:
            raise ValueError(f"tumor_mask_extra_mm must be >= 0, got {self.tumor_mask_extra_mm!r}")
        if not self.tumor_mask_cut_mm >= 0:
            raise ValueError(f"tumor_mask_cut_mm must be >= 0, got {self.tumor_mask_cut_mm!r}")

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["label_map"] = self.label_map.to_dict()
        for key in ("tumor_mask_extra_mm", "tumor_mask_cut_mm"):
            if not d[key]:
                del d[key]  # caches made before the option keep their key
        return d


def key_fields(stage: StageConfig, options: PreprocessOptions) -> Dict[str, Any]:
    """Everything that shapes a stage's cache (window and normalisation do not: HU is stored)."""
    fields: Dict[str, Any] = {"version": PREPROCESS_VERSION, "role": stage.role,
                              "spacing": [float(s) for s in stage.spacing], "options": options.to_dict()}
    if stage.role in ("kidney", "kidney_alone", "tumor"):
        fields["margin_mm"] = float(stage.margin_mm)
    if stage.role == "tumor":
        fields.update(mask_outside=bool(stage.mask_outside), mask_value=float(stage.mask_value),
                      mask_dilation_mm=float(stage.mask_dilation_mm))
    return fields


def cache_key(stage: StageConfig, options: PreprocessOptions) -> str:
    text = json.dumps(key_fields(stage, options), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def case_fingerprint(case: Case) -> str:
    """Short hash of the case files' sizes and modification times (ns)."""
    parts = []
    for p in (case.image_path, case.label_path):
        st = os.stat(p)
        parts.append(f"{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def stage_cache_dir(cache_root: PathLike, stage: StageConfig, options: PreprocessOptions) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", stage.name) or "stage"
    return Path(cache_root) / f"{safe}-{cache_key(stage, options)[:16]}"
