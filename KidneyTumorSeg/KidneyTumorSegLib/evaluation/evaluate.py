"""Score predicted label maps against references, case by case.

Predictions and references are paired by case id. Either side may be:

* one label file (``case_00001.nii.gz``, ``<id>.label.nii.gz``, ...);
* a folder of label files named by case id (``.nii.gz``, ``.nii``, ``.nrrd``,
  ``.mha``; suffixes ``.label``/``_label``/``_labels``/``_seg``/
  ``_segmentation`` after the id are dropped; Slicer ``.seg.nrrd`` files are
  skipped: their values are segment numbers, not KiTS labels);
* a folder of KiTS case folders (``case_X/segmentation.nii.gz``, or KiTS21/23's
  ``case_X/aggregated_MAJ_seg.nii.gz``);
* our ``segment`` command's output folder (``<out>/<id>/<id>.label.nii.gz``).

Both label maps of a case must be on the same grid (shape, spacing, origin and
direction within 1e-3) and hold only KiTS labels (0 background, 1 kidney,
2 tumor, 3 cyst; integer values stored as floats are fine): other label sets,
fractional or NaN values and images given as label maps are refused before
anything is written. Metrics come from :mod:`metrics`.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .metrics import DEFAULT_SURFACE_TOLERANCE_MM, case_metrics
from ..geometry.volume import InputError
from ..findings.terminology import KITS_LABEL_NAMES

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
# Names put after the case id by common tools (ours writes "<id>.label.nii.gz").
ID_TAILS = (".label", "_label", "_labels", "_seg", "_segmentation", "-label", "-seg")
# Per-case file names inside a case folder, in order of preference.
CASE_FOLDER_FILES = ("{id}.label.nii.gz", "segmentation.nii.gz", "aggregated_MAJ_seg.nii.gz")
GRID_TOLERANCE = 1e-3
# The values a label map may hold (KiTS19: 0-2; KiTS21/23 add 3, cyst, which metrics counts with the
# tumor as KiTS21's "masses" region). Anything else is refused, not scored.
_SHOWN_VALUES = 5  # distinct unexpected values named in the message


@dataclass
class Pairing:
    """Cases found on both sides, and case ids found on one side only (sorted)."""

    pairs: List[Tuple[str, Path, Path]] = field(default_factory=list)  # (case_id, prediction, reference)
    missing_predictions: List[str] = field(default_factory=list)  # references without a prediction
    missing_references: List[str] = field(default_factory=list)  # predictions without a reference


def case_id_of(path: PathLike) -> str:
    """Case id of a label file: ``a/case_00001/segmentation.nii.gz`` -> ``case_00001``,
    ``x/case_7.label.nii.gz`` -> ``case_7``."""
    p = Path(path)
    if p.name in CASE_FOLDER_FILES[1:]:
        return p.parent.resolve().name
    name = p.name
    for suffix in LABEL_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    for tail in ID_TAILS:
        if name.lower().endswith(tail) and len(name) > len(tail):
            return name[: -len(tail)]
    return name


def index_cases(spec: PathLike) -> Dict[str, Path]:
    """``{case_id: label file}`` for a file or folder (layouts in the module docstring)."""
    p = Path(spec)
    if p.is_file():
        return {case_id_of(p): p}
    if not p.is_dir():
        raise InputError(f"no such file or folder: '{spec}'")
    own = _case_folder_file(p)
    if own is not None:  # a single case folder
        return {p.resolve().name: own}
    found: Dict[str, Path] = {}
    for child in sorted(p.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_dir():
            f = _case_folder_file(child)
            cid = child.name
        elif _is_label_file(child):
            f, cid = child, case_id_of(child)
        else:
            continue
        if f is None:
            continue
        if cid in found:
            raise InputError(f"case id '{cid}' is given twice in '{spec}': '{found[cid]}' and '{f}'")
        found[cid] = f
    if not found:
        raise InputError(
            f"no label maps found in '{spec}' (looked for label files named by case id, "
            f"KiTS case folders with segmentation.nii.gz, and <id>/<id>.label.nii.gz)"
        )
    return found


def pair_cases(pred_spec: PathLike, gt_spec: PathLike) -> Pairing:
    """Pair predictions with references by case id (see the module docstring for layouts).

    Two single files are paired whatever their names. Raises ``InputError``
    when a path does not exist or no case id is found on both sides.
    """
    pred_is_file = Path(pred_spec).is_file()
    gt_is_file = Path(gt_spec).is_file()
    if pred_is_file and gt_is_file:
        return Pairing(pairs=[(case_id_of(pred_spec), Path(pred_spec), Path(gt_spec))])
    preds = index_cases(pred_spec)
    gts = index_cases(gt_spec)
    # one file against a folder: only that case is asked for
    if pred_is_file:
        gts = {k: v for k, v in gts.items() if k in preds}
    if gt_is_file:
        preds = {k: v for k, v in preds.items() if k in gts}
    common = sorted(set(preds) & set(gts))
    if not common:
        raise InputError(
            f"no case ids in common between predictions '{pred_spec}' ({_some(preds)}) "
            f"and references '{gt_spec}' ({_some(gts)})"
        )
    return Pairing(
        pairs=[(c, preds[c], gts[c]) for c in common],
        missing_predictions=sorted(set(gts) - set(preds)),
        missing_references=sorted(set(preds) - set(gts)),
    )


def evaluate(
    pred_spec: PathLike,
    gt_spec: PathLike,
    out_csv: Optional[PathLike] = None,
    summary_json: Optional[PathLike] = None,
    overwrite: bool = False,
    tolerance_mm: float = DEFAULT_SURFACE_TOLERANCE_MM,
    empty_dice: float = 1.0,
    progress: Optional[Callable[[int, int, str], None]] = None,
) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """Score every paired case; returns ``(rows, summary)`` and optionally writes them.

    ``rows``: one dict per case, ``case_id`` then the :func:`metrics.case_metrics`
    values (HD95 is ``inf`` where exactly one mask is empty). ``summary``:
    ``n_cases``, ``tolerance_mm``, ``missing_predictions``,
    ``missing_references`` and per metric ``mean``/``median``/``std``
    (sample std) over the finite values, with ``n`` (finite values) and
    ``n_infinite``. ``out_csv`` gets the rows (``inf`` written as ``inf``),
    ``summary_json`` the summary; both refuse to replace an existing file
    unless ``overwrite`` (checked before any work). ``progress(done, total,
    case_id)`` is called after each case.
    """
    from ..io.atomic import exists_message

    for out in (out_csv, summary_json):
        if out is not None and Path(out).exists() and not overwrite:
            raise FileExistsError(exists_message(out))
    pairing = pair_cases(pred_spec, gt_spec)
    for cid in pairing.missing_predictions:
        log.warning("no prediction for reference case '%s'", cid)
    for cid in pairing.missing_references:
        log.warning("no reference for predicted case '%s'", cid)
    rows: List[Dict[str, Any]] = []
    total = len(pairing.pairs)
    for n, (cid, pred_path, gt_path) in enumerate(pairing.pairs, 1):
        pred, gt, spacing_zyx = load_pair(cid, pred_path, gt_path)
        row: Dict[str, Any] = {"case_id": cid}
        row.update(case_metrics(pred, gt, spacing_zyx, tolerance_mm=tolerance_mm, empty_dice=empty_dice))
        rows.append(row)
        log.info("%s: kidney Dice %.4f, tumor Dice %.4f", cid, row["kidney_dice"], row["tumor_dice"])
        if progress is not None:
            progress(n, total, cid)
    summary = summarise(rows)
    summary.update(
        tolerance_mm=float(tolerance_mm),
        missing_predictions=pairing.missing_predictions,
        missing_references=pairing.missing_references,
    )
    if out_csv is not None:
        from ..io.writers import write_csv

        write_csv([_csv_row(r) for r in rows], out_csv, overwrite=overwrite)
    if summary_json is not None:
        from ..io.jsonfile import write_json

        write_json(summary, summary_json, overwrite=overwrite)
    return rows, summary


def summarise(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """``{"n_cases", "metrics": {name: {mean, median, std, n, n_infinite}}}`` over the rows' numbers."""
    names = [k for k in (rows[0] if rows else {}) if k != "case_id"]
    stats: Dict[str, Dict[str, Any]] = {}
    for name in names:
        vals = np.array([float(r[name]) for r in rows], dtype=float)
        fin = vals[np.isfinite(vals)]
        stats[name] = {
            "mean": float(fin.mean()) if fin.size else None,
            "median": float(np.median(fin)) if fin.size else None,
            "std": float(fin.std(ddof=1)) if fin.size > 1 else (0.0 if fin.size else None),
            "n": int(fin.size),
            "n_infinite": int(np.isinf(vals).sum()),
        }
    return {"n_cases": len(rows), "metrics": stats}


def load_pair(case_id: str, pred_path: PathLike, gt_path: PathLike) -> Tuple[np.ndarray, np.ndarray, Tuple[float, float, float]]:
    """Read both label maps; check they share a grid and hold only KiTS labels.

    Returns ``(pred, gt, spacing_zyx)``, uint8 arrays ``[k, j, i]``. Integer
    values stored as floats are accepted; anything else raises ``InputError``
    (see :func:`check_labels`).
    """
    pred_img = _read(case_id, "prediction", pred_path)
    gt_img = _read(case_id, "reference", gt_path)
    check_same_grid(case_id, pred_img, gt_img)
    pred = check_labels(case_id, "prediction", pred_path, sitk.GetArrayFromImage(pred_img))
    gt = check_labels(case_id, "reference", gt_path, sitk.GetArrayFromImage(gt_img))
    return pred, gt, tuple(float(s) for s in gt_img.GetSpacing()[::-1])  # type: ignore[return-value]


def check_labels(case_id: str, role: str, path: PathLike, arr: np.ndarray) -> np.ndarray:
    """``arr`` as uint8 when every voxel holds a KiTS label (:data:`KITS_LABEL_NAMES`, integer-valued).

    Otherwise raises ``InputError`` naming the case, the file, how many voxels
    are wrong and their first few distinct values: another label set (7, 255),
    fractional or NaN values, or an image given in place of a label map.
    """
    top = max(KITS_LABEL_NAMES)
    if arr.dtype.kind in "iub" and (arr.size == 0 or (arr.min() >= 0 and arr.max() <= top)):
        return arr.astype(np.uint8, copy=False)
    with np.errstate(invalid="ignore"):
        ok = (arr >= 0) & (arr <= top)  # NaN fails both
        if arr.dtype.kind == "f":
            ok &= arr == np.floor(arr)
    if ok.all():
        return arr.astype(np.uint8)
    values = np.unique(arr[~ok])
    shown = ", ".join(str(int(v)) if arr.dtype.kind in "iub" else f"{v:g}" for v in values[:_SHOWN_VALUES])
    if values.size > _SHOWN_VALUES:
        shown += f" and {values.size - _SHOWN_VALUES} more"
    allowed = ", ".join(f"{v} ({name})" for v, name in sorted(KITS_LABEL_NAMES.items())[:-1])
    allowed += f" and {top} ({KITS_LABEL_NAMES[top]})"
    raise InputError(
        f"case '{case_id}': the {role} '{path}' is not a KiTS label map: {int(np.count_nonzero(~ok))} voxel(s) "
        f"have values other than {allowed}: {shown}"
    )


def check_same_grid(case_id: str, pred: sitk.Image, gt: sitk.Image, tol: float = GRID_TOLERANCE) -> None:
    """Raise ``InputError`` naming the case and the first differing property."""
    checks = (
        ("size", pred.GetSize(), gt.GetSize()),
        ("spacing", pred.GetSpacing(), gt.GetSpacing()),
        ("origin", pred.GetOrigin(), gt.GetOrigin()),
        ("direction", pred.GetDirection(), gt.GetDirection()),
    )
    for what, a, b in checks:
        if len(a) != len(b) or not np.allclose(a, b, rtol=0.0, atol=tol):
            raise InputError(
                f"case '{case_id}': prediction and reference are not on the same grid "
                f"({what} {_fmt(a)} vs {_fmt(b)})"
            )


# --------------------------------------------------------------------------
def _read(case_id: str, role: str, path: PathLike) -> sitk.Image:
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"case '{case_id}': cannot read the {role} '{path}': {str(exc).strip().splitlines()[-1]}") from None
    if str(path).lower().endswith((".nii", ".nii.gz")):
        from ..io.volume_io import nifti_nonfinite_restored

        img = nifti_nonfinite_restored(path, img)  # ITK reads NaN as 0: a NaN label must not pass as background
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"case '{case_id}': the {role} '{path}' is not a 3D label map "
            f"({img.GetDimension()}D, {img.GetNumberOfComponentsPerPixel()} component(s))"
        )
    return img


def _is_label_file(p: Path) -> bool:
    name = p.name.lower()
    return p.is_file() and name.endswith(LABEL_SUFFIXES) and not name.endswith(".seg.nrrd")


def _case_folder_file(folder: Path) -> Optional[Path]:
    for pattern in CASE_FOLDER_FILES:
        f = folder / pattern.format(id=folder.name)
        if f.is_file():
            return f
    return None


def _some(d: Dict[str, Path], n: int = 3) -> str:
    ids = sorted(d)
    if not ids:
        return "none"
    more = f", ... {len(ids)} in all" if len(ids) > n else ""
    return ", ".join(ids[:n]) + more


def _fmt(v: Sequence[float]) -> str:
    return "(" + ", ".join(f"{x:g}" for x in v) + ")"


def _csv_row(row: Dict[str, Any]) -> Dict[str, Any]:
    # the shared CSV writer blanks non-finite numbers; an infinite HD95 is a result, not a gap
    return {k: (repr(v) if isinstance(v, float) and math.isinf(v) else v) for k, v in row.items()}
