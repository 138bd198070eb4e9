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

Modules: :mod:`.cache_keys` (the options, the key, the case fingerprint),
:mod:`.preprocess_case` (one case into its entry), :mod:`.stage_cache`
(reading a cache) and this one (a stage's cases: reuse, workers, index).
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from KidneyTumorSegLib.config import StageConfig
from KidneyTumorSegLib.io.jsonfile import write_json
from KidneyTumorSegLib.geometry.volume import InputError

from .cache_keys import (CACHE_FORMAT, LOCATION_CLASSES, PREPROCESS_VERSION, PathLike, PreprocessOptions, cache_key,
                         case_fingerprint, key_fields, stage_cache_dir)
from .data import Case
from .preprocess_case import process_case, resample_label
from .stage_cache import CachedItem, IntensityStats, StageCache, read_json

log = logging.getLogger(__name__)

# the preprocessing's public names, importable from here as before the module was split
__all__ = ["CACHE_FORMAT", "LOCATION_CLASSES", "PREPROCESS_VERSION", "CachedItem", "IntensityStats", "PreprocessOptions",
           "PreprocessResult", "StageCache", "cache_key", "case_fingerprint", "key_fields", "preprocess_stage",
           "process_case", "resample_label", "stage_cache_dir"]


def _job(args) -> Tuple[str, Dict[str, Any]]:
    case, stage, options, entry_dir = args
    return case.case_id, process_case(case, stage, options, entry_dir)


def _init_worker() -> None:
    # one interpolation thread per worker: the pool already uses the cores
    import torch

    torch.set_num_threads(1)


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
        write_json({"format": CACHE_FORMAT, "stage": stage.name, "key": key, "key_fields": key_fields(stage, options)},
                   cdir / "cache.json", overwrite=True, indent=1, sort_keys=True)
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise InputError("duplicate case ids in the training cases")
    _remove_abandoned(cdir / "cases")
    index = read_json(cdir / "index.json", {})
    entries, jobs, reused = _plan(cases, stage, options, cdir)
    if jobs:
        log.info("preprocessing %d case(s) for stage %s into %s (%d reused)", len(jobs), stage.name, cdir, len(reused))
    metas = _run_jobs(jobs, workers, len(reused), len(cases), progress)
    for cid in reused:
        metas[cid] = json.loads((cdir / "cases" / entries[cid] / "meta.json").read_text(encoding="utf-8"))
    _update_index(cdir, index, entries)
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
        write_json(asdict(stats), cdir / "intensity.json", overwrite=True, indent=1, sort_keys=True)
    return PreprocessResult(cdir, key, processed, sorted(reused), skipped, stats, sorted(entries))


def _plan(cases: Sequence[Case], stage: StageConfig, options: PreprocessOptions,
          cdir: Path) -> Tuple[Dict[str, str], List[tuple], List[str]]:
    """Each case's entry name (from its fingerprint), the jobs of the cases without an entry, the reused cases."""
    entries, jobs, reused = {}, [], []
    for case in cases:
        name = f"{case.case_id}.{case_fingerprint(case)}"
        entries[case.case_id] = name
        if (cdir / "cases" / name / "meta.json").is_file():
            reused.append(case.case_id)
        else:
            jobs.append((case, stage, options, cdir / "cases" / name))
    return entries, jobs, reused


def _run_jobs(jobs: Sequence[tuple], workers: int, done: int, total: int,
              progress: Optional[Callable[[int, int, str], None]]) -> Dict[str, Dict[str, Any]]:
    """Process the jobs (in a spawn pool when ``workers`` > 1); returns case id -> metadata."""
    metas: Dict[str, Dict[str, Any]] = {}
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
    return metas


def _update_index(cdir: Path, index: Dict[str, str], entries: Dict[str, str]) -> None:
    """Write ``index.json`` with these cases' entries and remove their stale entries (changed files)."""
    # stale entries of these cases (changed files) and entries the index no longer names
    index.update(entries)
    index = {cid: name for cid, name in index.items() if (cdir / "cases" / name / "meta.json").is_file()}
    write_json(index, cdir / "index.json", overwrite=True, indent=1, sort_keys=True)
    for p in (cdir / "cases").iterdir():
        cid = p.name.rsplit(".", 1)[0]
        if not p.name.startswith(".") and cid in entries and p.name != entries[cid]:
            shutil.rmtree(p, ignore_errors=True)


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
        info = read_json(p / "cache.json", None)
        if isinstance(info, dict) and info.get("format") == CACHE_FORMAT and info.get("stage") == stage.name:
            log.info("removing the outdated cache %s", p)
            shutil.rmtree(p, ignore_errors=True)
