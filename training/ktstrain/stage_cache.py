"""Reading a preprocessed stage cache: its items (memory-mapped arrays) and intensity statistics.

The cache is written by :func:`ktstrain.preprocess.preprocess_stage`
(layout in :mod:`ktstrain.preprocess`); ``cache.json`` says what its key
covers, ``index.json`` maps case ids to their entries under ``cases/``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from KidneyTumorSegLib.config import StageConfig
from KidneyTumorSegLib.geometry.volume import InputError, Volume

PathLike = Union[str, Path]


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
        index = read_json(self.cache_dir / "index.json", {})
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


def read_json(path: Path, default: Any) -> Any:
    """The JSON value in ``path``, or ``default`` when there is no such file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
