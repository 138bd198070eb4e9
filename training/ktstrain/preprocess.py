"""Preprocess training cases once per stage into an on-disk, memory-mappable cache.

Each case is read with the core's readers, reoriented to canonical order
(``geometry.canonical_reorient``) and cut the way the cascade cuts it at
inference time for the stage's role:

* ``roi``: the whole scan resampled to the stage spacing;
* ``kidney``: the kidneys' box (label > 0, cysts included) plus ``stage.margin_mm`` plus
  ``options.kidney_extra_margin_mm`` (the sampler jitters within it),
  resampled to the stage spacing;
* ``tumor``: per kidney (the largest 26-connected components of label > 0
  or cyst: a kidney found at inference can contain a cyst, the hard negative)
  the crop of ``cascade.kidney_crop``, the very function inference uses
  (outside the dilated kidney set to ``stage.mask_value``), resampled; label
  and cyst mask are cleared outside the dilated kidney too, as inference
  zeroes the tumor probability there.

Storage choices (and why):

* images are stored as **int16 HU** (linear resampling, rounded), not as
  normalised float32: half the disk and page cache, and the normalisation
  statistics (``norm_mean``/``norm_std``) come out of this same pass, so
  they would not be known yet; the sampler applies
  ``intensity.normalise(patch, stage)`` per patch, which costs little, and
  a changed window or statistics never invalidates the cache. Rounding to
  whole HU is far below CT noise (~10 HU).
* labels are resampled per class by linear interpolation thresholded at
  0.5 (nnU-Net's ``resample_segmentation``): smoother masks than nearest
  neighbour and no aliasing when downsampling 4x for the 3.4 mm stage.
  ``options.label_interpolation="nearest"`` picks nearest instead.
* the stored label keeps the mapped training labels (0, 1, 2); the sampler
  derives the stage target (label > 0, or label == 2 for the tumor stage).

Layout: ``<cache_root>/<stage name>-<key16>/`` with ``cache.json`` (what the
key covers), ``index.json`` (case -> entry), ``intensity.json`` and
``cases/<case_id>.<fingerprint>/`` holding ``meta.json`` and per item
``<item>_image.npy``, ``<item>_label.npy``, ``<item>_cyst.npy`` (when the
case has cyst labels), ``<item>_locations.npz`` (up to
``locations_per_class`` voxel indices ``(k, j, i)`` per class, like
nnU-Net's ``class_locations``) and ``intensity_sample.npy``. The key hashes
the stage fields that shape the cache, the options and
:data:`PREPROCESS_VERSION`; the fingerprint hashes the case files' sizes and
modification times. An entry is built in a temporary folder and renamed
into place in one step, so a killed run never leaves half an entry.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
import secrets
import shutil
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import cc3d
import numpy as np
from scipy import ndimage

from KidneyTumorSegLib.cascade import kidney_crop
from KidneyTumorSegLib.config import StageConfig
from KidneyTumorSegLib.geometry import Crop, Resample, box_from_mask, canonical_reorient, expand_box, resample_record
from KidneyTumorSegLib.volume import InputError, Volume
from KidneyTumorSegLib.volume_io import read_label, read_volume

from .data import Case, LabelMap

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
# Bump when the preprocessing changes in a way the key fields cannot see.
PREPROCESS_VERSION = 1
CACHE_FORMAT = "ktstrain-stage-cache"
# Location classes stored per item (on the stored, resampled label).
LOCATION_CLASSES = ("fg", "kidney", "tumor", "cyst")
_INT16 = (-32768, 32767)


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


# --------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------
def key_fields(stage: StageConfig, options: PreprocessOptions) -> Dict[str, Any]:
    """Everything that shapes a stage's cache (window and normalisation do not: HU is stored)."""
    fields: Dict[str, Any] = {"version": PREPROCESS_VERSION, "role": stage.role,
                              "spacing": [float(s) for s in stage.spacing], "options": options.to_dict()}
    if stage.role in ("kidney", "tumor"):
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


# --------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------
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
    if stage.role == "kidney":
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
    image = read_volume(case.image_path, validate=False)
    label = read_label(case.label_path)
    if image.shape != label.shape:
        raise InputError(f"{case.case_id}: image {image.shape} and label {label.shape} have different shapes (k, j, i)")
    if not image.same_grid(label, tol=1e-3):
        log.warning("%s: label geometry differs slightly from the image's; the image's is used", case.case_id)
    reo = canonical_reorient(image)
    can = reo.volume(image)
    lab, cyst = options.label_map.apply(reo.apply(label.array), name=f"{case.case_id} ({case.label_path.name})")
    del image, label
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
    tmp = entry_dir.parent / f".tmp-{entry_dir.name}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        _save(tmp / "intensity_sample.npy", sample.astype(np.float32))
        for it in items:
            _save(tmp / f"{it.name}_image.npy", it.image)
            _save(tmp / f"{it.name}_label.npy", it.label)
            if it.cyst is not None:
                _save(tmp / f"{it.name}_cyst.npy", it.cyst)
            locs = _locations(case.case_id, it, options.locations_per_class)
            _save(tmp / f"{it.name}_locations.npz", locs)
            meta["items"].append({
                "name": it.name, "shape": list(it.image.shape), "spacing": list(it.volume.spacing),
                "origin": list(it.volume.origin), "direction": list(it.volume.direction),
                "box": [list(b) for b in it.box], "has_cyst": it.cyst is not None,
                "fg_box": _region_box(it),
                "voxels": {"fg": int((it.label > 0).sum()), "kidney": int((it.label == 1).sum()),
                           "tumor": int((it.label == 2).sum()), "cyst": 0 if it.cyst is None else int(it.cyst.sum())},
                "locations": {k: int(len(v)) for k, v in locs.items()},
            })
        with open(tmp / "meta.json", "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.rename(tmp, entry_dir)  # atomic; fails if another run got there first
        except OSError:
            if not (entry_dir / "meta.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # same inputs, same bytes: keep theirs
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


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


def _job(args) -> Tuple[str, Dict[str, Any]]:
    case, stage, options, entry_dir = args
    return case.case_id, process_case(case, stage, options, entry_dir)


def _init_worker() -> None:
    # one interpolation thread per worker: the pool already uses the cores
    import torch

    torch.set_num_threads(1)


# --------------------------------------------------------------------------
# A stage's cache
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class IntensityStats:
    """Foreground (mapped label > 0) HU statistics over the cases, full resolution.

    ``mean``/``std`` are exact; percentiles and the ``window_*`` figures come
    from up to ``intensity_samples`` voxels per case (as nnU-Net does).
    ``window_mean``/``window_std``: of the voxels clipped to ``window``, which
    is what ``intensity.normalise`` subtracts and divides by.
    """

    n_cases: int
    n_voxels: int
    mean: float
    std: float
    min: float
    max: float
    p00_5: float
    p99_5: float
    window: Tuple[float, float]
    window_mean: float
    window_std: float

    def stage_fields(self) -> Dict[str, float]:
        return {"norm_mean": round(self.window_mean, 4), "norm_std": round(max(self.window_std, 1e-3), 4)}

    def apply(self, stage: StageConfig) -> StageConfig:
        """``stage`` with ``norm_mean``/``norm_std`` from these statistics (the exported StageConfig)."""
        return replace(stage, **self.stage_fields())


@dataclass(frozen=True)
class CachedItem:
    """One training sample source: a case (roi, kidney) or one kidney of a case (tumor).

    Arrays are ``(k, j, i)`` on the stage grid, memory-mapped read-only;
    ``spacing``/``origin``/``direction`` place that grid in LPS mm.
    """

    case_id: str
    name: str
    entry: Path
    shape: Tuple[int, int, int]
    spacing: Tuple[float, float, float]  # (x, y, z) mm
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]
    has_cyst: bool  # the case has cyst labels (the item's crop may still hold none: see voxels["cyst"])
    voxels: Dict[str, int]
    fg_box: Optional[Tuple[Tuple[int, int], ...]] = None

    @property
    def spacing_zyx(self) -> Tuple[float, float, float]:
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    def image(self) -> np.ndarray:
        """int16 HU, memory-mapped."""
        return np.load(self.entry / f"{self.name}_image.npy", mmap_mode="r")

    def label(self) -> np.ndarray:
        """uint8 mapped training labels, memory-mapped."""
        return np.load(self.entry / f"{self.name}_label.npy", mmap_mode="r")

    def cyst(self) -> Optional[np.ndarray]:
        return np.load(self.entry / f"{self.name}_cyst.npy", mmap_mode="r") if self.has_cyst else None

    def locations(self) -> Dict[str, np.ndarray]:
        """Sampled voxel indices ``(n, 3)`` ``(k, j, i)`` per class (``fg``, ``kidney``, ``tumor``, ``cyst``)."""
        with np.load(self.entry / f"{self.name}_locations.npz") as z:
            return {k: z[k] for k in z.files}

    def volume(self, array: Optional[np.ndarray] = None) -> Volume:
        """The stored grid as a ``Volume`` (HU image unless ``array`` is given), e.g. for validation in mm."""
        return Volume(np.asarray(self.image() if array is None else array), self.spacing, self.origin, self.direction)


class StageCache:
    """A preprocessed stage: its items, restricted to ``case_ids`` when given."""

    def __init__(self, cache_dir: PathLike, case_ids: Optional[Sequence[str]] = None):
        self.cache_dir = Path(cache_dir)
        info_path = self.cache_dir / "cache.json"
        if not info_path.is_file():
            raise InputError(f"'{self.cache_dir}' is not a stage cache (no cache.json); run the preprocessing first")
        self.info = json.loads(info_path.read_text(encoding="utf-8"))
        index = _read_json(self.cache_dir / "index.json", {})
        self.entries: Dict[str, Path] = {}
        wanted = sorted(index) if case_ids is None else list(case_ids)
        missing = [c for c in wanted if c not in index]
        if missing:
            raise InputError(f"case(s) {', '.join(missing)} are not in the cache '{self.cache_dir}'")
        self.metas: Dict[str, Dict[str, Any]] = {}
        self.items: List[CachedItem] = []
        for cid in wanted:
            entry = self.cache_dir / "cases" / index[cid]
            self.entries[cid] = entry
            meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
            self.metas[cid] = meta
            for it in meta["items"]:
                self.items.append(CachedItem(
                    cid, it["name"], entry, tuple(it["shape"]), tuple(it["spacing"]), tuple(it["origin"]),
                    tuple(it["direction"]), bool(it["has_cyst"]), dict(it["voxels"]),
                    None if it.get("fg_box") is None else tuple(tuple(b) for b in it["fg_box"]),
                ))

    @property
    def role(self) -> str:
        return self.info["key_fields"]["role"]

    @property
    def case_ids(self) -> List[str]:
        return sorted(self.metas)

    def intensity_statistics(self, window: Sequence[float] = (-1024.0, 1500.0)) -> IntensityStats:
        n = s = ss = 0.0
        samples = []
        for cid in self.case_ids:
            st = self.metas[cid]["intensity"]
            n += st["fg_voxels"]
            s += st["fg_sum"]
            ss += st["fg_sumsq"]
            samples.append(np.load(self.entries[cid] / "intensity_sample.npy"))
        if n == 0:
            raise InputError(f"no foreground voxels in the cases of '{self.cache_dir}'")
        v = np.concatenate(samples).astype(np.float64)
        mean = s / n
        std = float(np.sqrt(max(ss / n - mean * mean, 0.0)))
        clipped = np.clip(v, float(window[0]), float(window[1]))
        return IntensityStats(
            n_cases=len(self.case_ids), n_voxels=int(n), mean=float(mean), std=std, min=float(v.min()),
            max=float(v.max()), p00_5=float(np.percentile(v, 0.5)), p99_5=float(np.percentile(v, 99.5)),
            window=(float(window[0]), float(window[1])), window_mean=float(clipped.mean()),
            window_std=float(clipped.std()),
        )


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


def _write_json(path: Path, data: Any) -> None:
    """Atomic replace: these files are derived from the entries and rewritten on every run."""
    tmp = path.with_name(f".tmp-{path.name}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# --------------------------------------------------------------------------
# Many cases
# --------------------------------------------------------------------------
@dataclass
class PreprocessResult:
    """What :func:`preprocess_stage` did: ``processed`` (built now), ``reused`` (found in the cache),
    ``skipped`` (case id -> reason, e.g. no kidney for a crop stage; they have no items)."""

    cache_dir: Path
    key: str
    processed: List[str]
    reused: List[str]
    skipped: Dict[str, str]
    intensity: Optional[IntensityStats]
    case_ids: List[str]

    @property
    def cache(self) -> StageCache:
        return StageCache(self.cache_dir, self.case_ids)


def preprocess_stage(
    cases: Sequence[Case],
    stage: StageConfig,
    cache_root: PathLike,
    options: Optional[PreprocessOptions] = None,
    workers: int = 1,
    prune: bool = False,
    progress: Optional[Callable[[int, int, str], None]] = None,
) -> PreprocessResult:
    """Preprocess ``cases`` for ``stage`` into ``<cache_root>/<stage.name>-<key16>/``; reuse what is there.

    An entry is reused when the case's files have the size and modification
    time they had when it was built; otherwise it is rebuilt under a new
    name and the old one removed. ``workers`` > 1 uses a process pool (spawn,
    so it behaves the same on Linux, macOS and Windows); every case gets its
    own seed from its id, so results do not depend on ``workers``.
    ``prune`` removes this stage's caches under other keys (changed
    configurations). ``progress(done, total, case_id)`` after each case.
    Errors in a case (unreadable file, unknown label values) raise
    ``InputError`` naming it; finished entries stay valid.
    """
    options = options or PreprocessOptions()
    cdir = stage_cache_dir(cache_root, stage, options)
    key = cache_key(stage, options)
    (cdir / "cases").mkdir(parents=True, exist_ok=True)
    if not (cdir / "cache.json").is_file():
        _write_json(cdir / "cache.json", {"format": CACHE_FORMAT, "stage": stage.name, "key": key,
                                          "key_fields": key_fields(stage, options)})
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise InputError("duplicate case ids in the training cases")
    _remove_abandoned(cdir / "cases")
    index = _read_json(cdir / "index.json", {})
    entries, jobs, reused = {}, [], []
    for case in cases:
        name = f"{case.case_id}.{case_fingerprint(case)}"
        entries[case.case_id] = name
        if (cdir / "cases" / name / "meta.json").is_file():
            reused.append(case.case_id)
        else:
            jobs.append((case, stage, options, cdir / "cases" / name))
    done = len(reused)
    total = len(cases)
    metas: Dict[str, Dict[str, Any]] = {}
    if jobs:
        log.info("preprocessing %d case(s) for stage %s into %s (%d reused)", len(jobs), stage.name, cdir, len(reused))
    if jobs and workers > 1:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(workers, len(jobs)), initializer=_init_worker) as pool:
            for cid, meta in pool.imap_unordered(_job, jobs):
                metas[cid] = meta
                done += 1
                if progress:
                    progress(done, total, cid)
    else:
        for job in jobs:
            cid, meta = _job(job)
            metas[cid] = meta
            done += 1
            if progress:
                progress(done, total, cid)
    for cid in reused:
        metas[cid] = json.loads((cdir / "cases" / entries[cid] / "meta.json").read_text(encoding="utf-8"))
    # stale entries of these cases (changed files) and entries the index no longer names
    index.update(entries)
    index = {cid: name for cid, name in index.items() if (cdir / "cases" / name / "meta.json").is_file()}
    _write_json(cdir / "index.json", index)
    for p in (cdir / "cases").iterdir():
        cid = p.name.rsplit(".", 1)[0]
        if not p.name.startswith(".") and cid in entries and p.name != entries[cid]:
            shutil.rmtree(p, ignore_errors=True)
    if prune:
        _prune(Path(cache_root), stage, cdir)
    skipped = {cid: m["skipped"] for cid, m in metas.items() if m.get("skipped")}
    for cid, why in sorted(skipped.items()):
        log.warning("%s: no %s sample (%s)", cid, stage.name, why)
    processed = sorted(metas.keys() - set(reused))
    cache = StageCache(cdir, sorted(entries))
    has_fg = any(m["intensity"]["fg_voxels"] for m in metas.values())
    stats = cache.intensity_statistics(stage.window) if has_fg else None
    if stats is not None:
        _write_json(cdir / "intensity.json", asdict(stats))
    return PreprocessResult(cdir, key, processed, sorted(reused), skipped, stats, sorted(entries))


def _remove_abandoned(folder: Path, age_s: float = 3600.0) -> None:
    # Temporary entries of killed runs; a young one may belong to a run still going.
    now = time.time()
    for p in folder.glob(".tmp-*"):
        try:
            if now - p.stat().st_mtime > age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _prune(cache_root: Path, stage: StageConfig, keep: Path) -> None:
    for p in cache_root.iterdir():
        if p == keep or not p.is_dir():
            continue
        info = _read_json(p / "cache.json", None)
        if isinstance(info, dict) and info.get("format") == CACHE_FORMAT and info.get("stage") == stage.name:
            log.info("removing the outdated cache %s", p)
            shutil.rmtree(p, ignore_errors=True)
