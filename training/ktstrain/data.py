"""Training cases on disk and how their raw labels become training labels.

Layouts found by :func:`discover_cases` (all are "KiTS layout": one folder
per case holding the CT and its label map):

* KiTS19: ``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz``
  (0 background, 1 kidney, 2 tumor);
* KiTS21/23: the same names (KiTS21's repository also ships
  ``aggregated_MAJ_seg.nii.gz``, used when ``segmentation.nii.gz`` is
  absent); label 3 is a cyst;
* phantoms written by ``KidneyTumorSegLib.phantom.write_phantom_cases``:
  the same layout plus ``phantom_info.json``. Their cysts are labelled 3
  only when the phantoms were made with ``cyst_label=True``; otherwise the
  cysts are background in the label map and no hard-negative mask exists.

The :class:`LabelMap` turns raw labels into training labels (default: cysts
become background) and names the raw labels whose voxels form the separate
cyst mask that the sampler uses for hard negatives (report 002).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from KidneyTumorSegLib.geometry.volume import InputError
from KidneyTumorSegLib.io.volume_io import KITS_IMAGE, KITS_LABEL

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

# KiTS21's repository names its majority-vote label like this.
KITS21_LABEL = "aggregated_MAJ_seg.nii.gz"
LABEL_NAMES = (KITS_LABEL, KITS21_LABEL)
PHANTOM_INFO = "phantom_info.json"


@dataclass(frozen=True)
class Case:
    """One training case: ``image_path`` (CT, HU) and ``label_path`` (raw label map).

    ``layout`` is ``"kits"`` or ``"phantom"``; ``cyst_labelled`` is False for
    phantoms written without cyst labels (their cysts are background), None
    where unknown (read from the label map at preprocessing time).
    """

    case_id: str
    image_path: Path
    label_path: Path
    layout: str = "kits"
    cyst_labelled: Optional[bool] = None


@dataclass(frozen=True)
class LabelMap:
    """Raw label value -> training label, plus the raw labels that form the cyst mask.

    ``mapping`` must name every raw value present in a label map (an unknown
    value raises ``InputError``, which catches a data set with another label
    convention). ``cyst_labels`` are raw values whose voxels go into the
    hard-negative mask, whatever ``mapping`` makes of them.
    """

    mapping: Dict[int, int] = field(default_factory=lambda: {0: 0, 1: 1, 2: 2, 3: 0})
    cyst_labels: Tuple[int, ...] = (3,)

    def __post_init__(self) -> None:
        m = {int(k): int(v) for k, v in dict(self.mapping).items()}
        if any(k < 0 or k > 255 or v < 0 or v > 255 for k, v in m.items()):
            raise ValueError(f"label_map values must be 0..255, got {m}")
        object.__setattr__(self, "mapping", m)
        object.__setattr__(self, "cyst_labels", tuple(int(c) for c in self.cyst_labels))

    @classmethod
    def from_dict(cls, data: Optional[Dict[str, Any]]) -> "LabelMap":
        """From ``{"mapping": {"0": 0, ...}, "cyst_labels": [3]}`` (JSON keys are strings) or a bare mapping."""
        if not data:
            return cls()
        data = dict(data)
        if "mapping" not in data and "cyst_labels" not in data:
            data = {"mapping": data}
        unknown = sorted(set(data) - {"mapping", "cyst_labels"})
        if unknown:
            raise ValueError(f"LabelMap: unknown field(s) {', '.join(unknown)}")
        kw: Dict[str, Any] = {}
        if "mapping" in data:
            kw["mapping"] = {int(k): int(v) for k, v in data["mapping"].items()}
        if "cyst_labels" in data:
            kw["cyst_labels"] = tuple(int(c) for c in data["cyst_labels"])
        return cls(**kw)

    def to_dict(self) -> Dict[str, Any]:
        return {"mapping": {str(k): v for k, v in sorted(self.mapping.items())}, "cyst_labels": list(self.cyst_labels)}

    def apply(self, raw: np.ndarray, name: str = "label map") -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Map a raw label array (any shape) to ``(training labels uint8, cyst mask bool or None)``.

        The cyst mask is None when no voxel has a cyst label (KiTS19, phantoms
        without cyst labels), so "no cyst here" and "cysts not annotated" are
        not confused with an empty mask downstream.
        """
        raw = np.asarray(raw)
        if raw.dtype.kind == "u" and raw.itemsize <= 2:
            present = np.flatnonzero(np.bincount(raw.ravel(), minlength=1))  # much faster than unique on a CT
        else:
            present = np.unique(raw)
        unknown = [int(v) for v in present if int(v) not in self.mapping]
        if unknown:
            raise InputError(
                f"{name}: label value(s) {unknown} are not in the label map {sorted(self.mapping)}; "
                f"extend label_map to say what they mean"
            )
        lut = np.zeros(int(present.max()) + 1 if present.size else 1, np.uint8)
        for k, v in self.mapping.items():
            if k < lut.size:
                lut[k] = v
        mapped = lut[raw]
        cyst = None
        if any(int(c) in present for c in self.cyst_labels):
            cyst = np.isin(raw, self.cyst_labels)
        return mapped, cyst


def discover_cases(root: PathLike, require_label: bool = True, case_ids: Optional[Sequence[str]] = None) -> List[Case]:
    """Training cases under ``root``, sorted by case id.

    ``root`` is a folder of case folders (``case_XXXXX/imaging.nii.gz`` with
    ``segmentation.nii.gz`` or ``aggregated_MAJ_seg.nii.gz``) or one such case
    folder. Hidden folders are skipped; case folders without a label map are
    skipped with a warning (KiTS test cases) unless ``require_label`` is False
    (then ``label_path`` names the missing ``segmentation.nii.gz``).
    ``case_ids`` keeps only those ids (all must exist). Raises ``InputError``
    naming ``root`` when it holds no case.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"training data folder not found: '{root}'")
    folders = [root] if (root / KITS_IMAGE).is_file() else sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / KITS_IMAGE).is_file()
    )
    cases: List[Case] = []
    for folder in folders:
        label = next((folder / n for n in LABEL_NAMES if (folder / n).is_file()), None)
        if label is None:
            if require_label:
                log.warning("skipping %s: no %s", folder, " or ".join(LABEL_NAMES))
                continue
            label = folder / KITS_LABEL
        layout, cyst = _layout(folder)
        cases.append(Case(folder.name, folder / KITS_IMAGE, label, layout, cyst))
    if case_ids is not None:
        by_id = {c.case_id: c for c in cases}
        missing = [c for c in case_ids if c not in by_id]
        if missing:
            raise InputError(f"case(s) {', '.join(missing)} not found in '{root}'")
        cases = [by_id[c] for c in sorted(set(case_ids))]
    if not cases:
        raise InputError(f"no training cases in '{root}' (expected case folders with {KITS_IMAGE} and {KITS_LABEL})")
    unlabelled = [c.case_id for c in cases if c.cyst_labelled is False]
    if unlabelled:
        log.info("%d phantom case(s) have unlabelled cysts (written without cyst_label=True): no hard negatives there",
                 len(unlabelled))
    return cases


def _layout(folder: Path) -> Tuple[str, Optional[bool]]:
    info = folder / PHANTOM_INFO
    if not info.is_file():
        return "kits", None
    try:
        data = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable %s (%s); treated as a KiTS case", folder, PHANTOM_INFO, exc)
        return "kits", None
    return "phantom", bool(data.get("cyst_label", False))
