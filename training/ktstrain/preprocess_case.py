"""Preprocessing of one case: read, reorient, cut into the stage's items, resample, write its entry.

How each role cuts a case and how images and labels are stored (int16 HU,
labels resampled per class) is described in :mod:`ktstrain.preprocess`.
"""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import cc3d
import numpy as np
from scipy import ndimage

from KidneyTumorSegLib.cascade import kidney_crop
from KidneyTumorSegLib.config import StageConfig
from KidneyTumorSegLib.geometry.boxes import box_from_mask, expand_box
from KidneyTumorSegLib.geometry.records import Crop, Resample, canonical_reorient, resample_record
from KidneyTumorSegLib.io.jsonfile import write_json
from KidneyTumorSegLib.geometry.volume import InputError, Volume
from KidneyTumorSegLib.io.volume_io import read_label, read_volume

from .cache_keys import CACHE_FORMAT, PREPROCESS_VERSION, PathLike, PreprocessOptions
from .data import Case

# the module's messages keep the logger name they had before preprocess.py was split
log = logging.getLogger("ktstrain.preprocess")

_INT16 = (-32768, 32767)


@dataclass
class _Item:
    name: str
    image: np.ndarray  # int16 HU (k, j, i)
    label: np.ndarray  # uint8 mapped labels
    cyst: Optional[np.ndarray]  # bool or None
    volume: Volume  # geometry of the stored grid (array unused)
    box: Tuple[Tuple[int, int], ...]  # crop box in the canonical full-resolution grid


def resample_label(label: np.ndarray, rec: Resample, mode: str = "linear") -> np.ndarray:
    """Resample a label map ``(k, j, i)``: per class linear >= 0.5 (higher labels win ties) or nearest."""
    if rec.is_identity:
        return label.copy()
    if mode == "nearest":
        return rec.apply(label, order=0)
    out = np.zeros(rec.out_shape, label.dtype)
    for v in np.unique(label):
        if v == 0:
            continue
        out[rec.apply((label == v).astype(np.float32), order=1) >= 0.5] = v
    return out


def _to_int16(arr: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(arr), *_INT16).astype(np.int16)


def _resampled_item(name: str, vol: Volume, label: np.ndarray, cyst: Optional[np.ndarray], stage: StageConfig,
                    opts: PreprocessOptions, box) -> _Item:
    rec = resample_record(vol.shape, vol.spacing_zyx, stage.spacing)
    # the same float32 linear resampling as cascade._predict_on_grid
    img = rec.apply(vol.array.astype(np.float32), order=1)
    geo = rec.volume(vol, array=np.zeros((1, 1, 1), np.uint8))
    lab = resample_label(label, rec, opts.label_interpolation)
    cy = None if cyst is None else resample_label(cyst.astype(np.uint8), rec, opts.label_interpolation).astype(bool)
    return _Item(name, _to_int16(img), lab, cy, geo, box)


def _items(can: Volume, lab: np.ndarray, cyst: Optional[np.ndarray], stage: StageConfig,
           opts: PreprocessOptions) -> Tuple[List[_Item], str]:
    full = tuple((0, n) for n in can.shape)
    if stage.role == "roi":
        return [_resampled_item("0", can, lab, cyst, stage, opts, full)], ""
    # The kidney region includes cysts: a kidney found at inference can hold one, and
    # that is where the tumor stage must learn to say "no tumor" (report 002).
    fg = lab > 0
    if cyst is not None:
        fg |= cyst
    if not fg.any():
        return [], "no kidney in the label map"
    if stage.role in ("kidney", "kidney_alone"):  # kidney_alone (report 003's K) sees the kidney stage's region
        margin = [(stage.margin_mm + opts.kidney_extra_margin_mm) / s for s in can.spacing_zyx]
        box = expand_box(box_from_mask(fg), margin, shape=can.shape)
        crop = Crop(box, can.shape)
        vol = crop.volume(can)
        cy = None if cyst is None else crop.apply(cyst)
        return [_resampled_item("0", vol, crop.apply(lab), cy, stage, opts, box)], ""
    # tumor: one item per kidney, cut by the cascade's own kidney_crop
    cc = cc3d.largest_k(fg, k=max(1, opts.max_kidneys), connectivity=26)
    stats = cc3d.statistics(cc)
    counts = np.asarray(stats["voxel_counts"])
    order = [int(c) for c in np.argsort(-counts[1:], kind="stable") + 1 if counts[c] > 0]
    items = []
    for rank, c in enumerate(order):
        if rank > 0 and counts[c] * can.voxel_volume_ml() < opts.min_kidney_ml:
            continue
        bb = stats["bounding_boxes"][c]
        comp = cc[bb] == c
        variants = [("", stage, comp)]
        if opts.tumor_mask_extra_mm > 0 and stage.mask_outside:
            dil = stage.mask_dilation_mm + opts.tumor_mask_extra_mm
            variants.append(("w", replace(stage, mask_dilation_mm=dil, margin_mm=max(stage.margin_mm, dil + 2.0)), comp))
        if opts.tumor_mask_cut_mm > 0 and stage.mask_outside:
            cut = _cut_tumor(comp, lab[bb], can.spacing_zyx, opts.tumor_mask_cut_mm, int(counts[c]))
            if cut is not None:
                variants.append(("c", stage, cut))
        for suffix, st, kmask in variants:
            kc = kidney_crop(can, kmask, tuple(s.start for s in bb), st)
            crop = Crop(kc.box, can.shape)
            klab = crop.apply(lab)
            kcyst = None if cyst is None else crop.apply(cyst)
            if st.mask_outside:
                klab[~kc.allowed] = 0
                if kcyst is not None:
                    kcyst &= kc.allowed
            items.append(_resampled_item(f"k{rank}{suffix}", kc.volume, klab, kcyst, stage, opts, kc.box))
    return items, ""


def _cut_tumor(comp: np.ndarray, lab: np.ndarray, spacing_zyx, max_mm: float, salt: int) -> Optional[np.ndarray]:
    """``comp`` without its tumor voxels farther than a random 0..``max_mm`` from its kidney voxels
    (None when it has no tumor or no kidney voxel, or the cut would remove nothing)."""
    tumor = comp & (lab == 2)
    kidney = comp & (lab != 2)
    if not tumor.any() or not kidney.any():
        return None
    depth = float(np.random.default_rng([salt, PREPROCESS_VERSION]).uniform(0.0, max_mm))
    far = tumor & (ndimage.distance_transform_edt(~kidney, sampling=spacing_zyx) > depth)
    return comp & ~far if far.any() else None


def _region_box(item: _Item) -> Optional[List[List[int]]]:
    """Box ``(k, j, i)`` of kidney, tumor and cyst on the stored grid (None if there are none)."""
    region = item.label > 0
    if item.cyst is not None:
        region = region | item.cyst
    return [list(b) for b in box_from_mask(region)] if region.any() else None


def _rng(case_id: str, salt: str) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(f"{case_id}/{salt}".encode()), PREPROCESS_VERSION])


def _locations(case_id: str, item: _Item, n: int) -> Dict[str, np.ndarray]:
    masks = {"fg": item.label > 0, "kidney": item.label == 1, "tumor": item.label == 2}
    if item.cyst is not None:
        masks["cyst"] = item.cyst
    out = {}
    for name, m in masks.items():
        idx = np.argwhere(m).astype(np.int32)
        if len(idx) > n:
            pick = np.sort(_rng(case_id, f"{item.name}/{name}").choice(len(idx), n, replace=False))
            idx = idx[pick]
        out[name] = idx
    return out


def process_case(case: Case, stage: StageConfig, options: PreprocessOptions, entry_dir: PathLike) -> Dict[str, Any]:
    """Preprocess one case into ``entry_dir`` (created atomically; must not exist). Returns its metadata."""
    entry_dir = Path(entry_dir)
    can, lab, cyst = _read_canonical(case, options)
    fg_values = can.array[lab > 0]
    sample = fg_values
    if len(fg_values) > options.intensity_samples:
        sample = fg_values[np.sort(_rng(case.case_id, "intensity").choice(len(fg_values), options.intensity_samples,
                                                                          replace=False))]
    items, reason = _items(can, lab, cyst, stage, options)
    meta: Dict[str, Any] = {
        "format": CACHE_FORMAT, "version": PREPROCESS_VERSION, "case_id": case.case_id, "role": stage.role,
        "source": {"image": str(case.image_path), "label": str(case.label_path), "layout": case.layout},
        "canonical_shape": list(can.shape), "canonical_spacing": list(can.spacing),
        "has_cyst_label": cyst is not None, "skipped": reason,
        "intensity": {"fg_voxels": int(fg_values.size), "fg_sum": float(fg_values.sum(dtype=np.float64)),
                      "fg_sumsq": float(np.square(fg_values, dtype=np.float64).sum())},
        "items": [],
    }
    _write_entry(entry_dir, case.case_id, items, sample, meta, options.locations_per_class)
    return meta


def _read_canonical(case: Case, options: PreprocessOptions) -> Tuple[Volume, np.ndarray, Optional[np.ndarray]]:
    """The case's image in canonical order and its mapped label and cyst mask on that grid."""
    image = read_volume(case.image_path, validate=False)
    label = read_label(case.label_path)
    if image.shape != label.shape:
        raise InputError(f"{case.case_id}: image {image.shape} and label {label.shape} have different shapes (k, j, i)")
    if not image.same_grid(label, tol=1e-3):
        log.warning("%s: label geometry differs slightly from the image's; the image's is used", case.case_id)
    reo = canonical_reorient(image)
    can = reo.volume(image)
    lab, cyst = options.label_map.apply(reo.apply(label.array), name=f"{case.case_id} ({case.label_path.name})")
    return can, lab, cyst


def _write_entry(entry_dir: Path, case_id: str, items: List[_Item], sample: np.ndarray, meta: Dict[str, Any],
                 locations_per_class: int) -> None:
    """Write the entry into a temporary folder and rename it into place; ``meta["items"]`` gets one record per item."""
    tmp = entry_dir.parent / f".tmp-{entry_dir.name}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        _save(tmp / "intensity_sample.npy", sample.astype(np.float32))
        for it in items:
            _save(tmp / f"{it.name}_image.npy", it.image)
            _save(tmp / f"{it.name}_label.npy", it.label)
            if it.cyst is not None:
                _save(tmp / f"{it.name}_cyst.npy", it.cyst)
            locs = _locations(case_id, it, locations_per_class)
            _save(tmp / f"{it.name}_locations.npz", locs)
            meta["items"].append(_item_record(it, locs))
        write_json(meta, tmp / "meta.json", indent=1)
        try:
            os.rename(tmp, entry_dir)  # atomic; fails if another run got there first
        except OSError:
            if not (entry_dir / "meta.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # same inputs, same bytes: keep theirs
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _item_record(it: _Item, locs: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """An item's record in ``meta.json``: its grid, crop box, region box, voxel and location counts."""
    return {
        "name": it.name, "shape": list(it.image.shape), "spacing": list(it.volume.spacing),
        "origin": list(it.volume.origin), "direction": list(it.volume.direction),
        "box": [list(b) for b in it.box], "has_cyst": it.cyst is not None,
        "fg_box": _region_box(it),
        "voxels": {"fg": int((it.label > 0).sum()), "kidney": int((it.label == 1).sum()),
                   "tumor": int((it.label == 2).sum()), "cyst": 0 if it.cyst is None else int(it.cyst.sum())},
        "locations": {k: int(len(v)) for k, v in locs.items()},
    }


def _save(path: Path, data: Any) -> None:
    # flushed to disk before the entry is renamed into place, so a power cut cannot leave a
    # complete-looking entry with empty files
    with open(path, "wb") as f:
        if isinstance(data, dict):
            np.savez(f, **data)
        else:
            np.save(f, data)
        f.flush()
        os.fsync(f.fileno())
