"""Patches for training, drawn from a preprocessed stage cache (numpy, torch ``Dataset`` compatible).

Each index draws, with a generator seeded by ``(seed, epoch, index)`` (so
the result depends on neither worker count nor order):

1. a case uniformly, then one of its items (the kidneys of the tumor stage);
2. a kind: ``fg`` with probability ``fg_fraction`` (a patch around a
   voxel of the stage's target: kidney+tumor, or tumor for the tumor stage,
   falling back to the kidney where a kidney has no tumor), ``tumor`` with
   ``tumor_fraction`` (around a tumor voxel, the item drawn among those with
   tumor; for the kidney and ROI stages, whose target counts a tumor as
   foreground but whose misses are mostly exophytic tumors), ``cyst`` with
   ``hard_negative_fraction`` (around a cyst voxel, report 002's hard
   negatives; the item is drawn among those with cyst voxels so the
   fraction holds; without any cyst in the data the patch is uniform), else
   ``random`` (uniform over all positions, the patch overlapping the image);
3. the patch: the chosen voxel sits at the patch centre moved by up to
   ``centre_jitter`` of half the patch per axis (so the network sees no
   fixed centre). Where the patch leaves the image the HU image is padded
   with ``pad_hu`` (default the window's low end, -1024 HU, which is what
   inference pads with) before normalisation, the label with 0;
4. kidney stage only: the region of interest that stage 1 hands over at
   inference is simulated: the kidneys' box plus a margin drawn per side
   from ``margin_mm_range`` (default ``stage.margin_mm`` to that plus the
   cache's extra margin); outside it the image is padded like outside the
   image, as the sliding window pads a region of interest smaller than
   the patch.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch.utils.data

from KidneyTumorSegLib.config import StageConfig
from KidneyTumorSegLib.geometry.boxes import Box
from KidneyTumorSegLib.geometry.records import Crop
from KidneyTumorSegLib.engine.intensity import normalise

from .stage_cache import CachedItem, StageCache

KINDS = ("fg", "tumor", "cyst", "random")


def stage_target(label: np.ndarray, stage: StageConfig) -> np.ndarray:
    """The stage's training target from mapped labels, uint8: label == 2 (tumor stage), label == 1 (kidney_alone); for the roi and
    kidney stages label > 0, or the labels themselves (0 background, 1 kidney, 2 tumor) when the network
    has three output channels (kidney and tumor as separate classes, the foreground their sum)."""
    if stage.role == "tumor":
        return (label == 2).astype(np.uint8)
    if stage.role == "kidney_alone":  # report 003's K: the kidney without its tumor
        return (label == 1).astype(np.uint8)
    if stage.network.out_channels == 3:
        return np.minimum(label, 2).astype(np.uint8)
    return (label > 0).astype(np.uint8)


class PatchSampler(torch.utils.data.Dataset):
    """``samples_per_epoch`` random patches per epoch from ``cache`` (see the module docstring).

    ``__getitem__`` returns ``dict(image=float32 (1, k, j, i) normalised with
    intensity.normalise(., stage), label=uint8 (k, j, i), case_id, item, kind,
    start)`` where ``start`` is the patch's first voxel ``(k, j, i)`` on the
    item's grid (negative where padded). ``target="stage"`` gives the binary
    stage target, ``"labels"`` the mapped labels (0, 1, 2). Call
    :meth:`set_epoch` before each epoch (DataLoader workers get a fresh copy
    of the sampler per epoch unless ``persistent_workers``).
    """

    def __init__(
        self,
        cache: StageCache,
        stage: StageConfig,
        samples_per_epoch: int = 250,
        patch_size: Optional[Sequence[int]] = None,
        fg_fraction: float = 0.33,
        hard_negative_fraction: float = 0.1,
        seed: int = 0,
        epoch: int = 0,
        pad_hu: Optional[float] = None,
        centre_jitter: float = 0.25,
        target: str = "stage",
        margin_mm_range: Optional[Sequence[float]] = None,
        tumor_fraction: float = 0.0,
    ):
        fractions = (fg_fraction, tumor_fraction, hard_negative_fraction)
        if not all(0 <= f <= 1 for f in fractions) or sum(fractions) > 1:
            raise ValueError(f"fg_fraction ({fg_fraction}), tumor_fraction ({tumor_fraction}) and hard_negative_fraction "
                             f"({hard_negative_fraction}) must be in [0, 1] and add up to at most 1")
        if target not in ("stage", "labels"):
            raise ValueError(f"target must be 'stage' or 'labels', got {target!r}")
        if not cache.items:
            raise ValueError(f"the cache '{cache.cache_dir}' has no items to sample from")
        self.stage = stage
        self.patch_size = tuple(int(p) for p in (patch_size or stage.patch_size))
        self.samples_per_epoch = int(samples_per_epoch)
        self.fg_fraction = float(fg_fraction)
        self.hard_negative_fraction = float(hard_negative_fraction)
        self.tumor_fraction = float(tumor_fraction)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.pad_hu = float(stage.window[0] if pad_hu is None else pad_hu)
        if margin_mm_range is None and stage.role in ("kidney", "kidney_alone"):
            extra = float(cache.info.get("key_fields", {}).get("options", {}).get("kidney_extra_margin_mm", 0.0))
            margin_mm_range = (stage.margin_mm, stage.margin_mm + extra)
        self.margin_mm_range = None if margin_mm_range is None else tuple(float(m) for m in margin_mm_range)
        self.centre_jitter = float(centre_jitter)
        self.target = target
        self.fg_class = "tumor" if stage.role == "tumor" else "fg"
        self.items: List[CachedItem] = list(cache.items)
        by_case: Dict[str, List[int]] = {}
        for n, it in enumerate(self.items):
            by_case.setdefault(it.case_id, []).append(n)
        self.case_items = [by_case[c] for c in sorted(by_case)]
        self.cyst_items = [n for n, it in enumerate(self.items) if it.voxels.get("cyst", 0) > 0]
        self.tumor_items = [n for n, it in enumerate(self.items) if it.voxels.get("tumor", 0) > 0]
        self._locs: Dict[int, Dict[str, np.ndarray]] = {}

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_locs"] = {}  # rebuilt lazily in each worker
        return state

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def locations(self, n: int) -> Dict[str, np.ndarray]:
        if n not in self._locs:
            self._locs[n] = self.items[n].locations()
        return self._locs[n]

    def draw(self, index: int) -> Tuple[int, str, np.ndarray, Optional[Box]]:
        """Item number, kind, patch start ``(k, j, i)`` and simulated ROI box (or None) for ``index`` in this epoch."""
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        u = rng.random()
        # (the tumor kind sits between fg and cyst so that tumor_fraction 0 draws exactly as before it existed)
        f_fg, f_tu = self.fg_fraction, self.fg_fraction + self.tumor_fraction
        kind = ("fg" if u < f_fg else "tumor" if u < f_tu else "cyst" if u < f_tu + self.hard_negative_fraction
                else "random")
        special = {"cyst": self.cyst_items, "tumor": self.tumor_items}.get(kind)
        if special:
            n = special[int(rng.integers(len(special)))]
        else:
            items = self.case_items[int(rng.integers(len(self.case_items)))]
            n = items[int(rng.integers(len(items)))]
        shape = np.array(self.items[n].shape)
        patch = np.array(self.patch_size)
        centres = None
        if kind != "random":
            locs = self.locations(n)
            names = {"cyst": ("cyst",), "tumor": ("tumor", "fg")}.get(kind, (self.fg_class, "fg"))
            centres = next((locs[c] for c in names if c in locs and len(locs[c])), None)
        if centres is None:
            kind = "random"
            lo, hi = np.minimum(0, shape - patch), np.maximum(0, shape - patch)
            start = np.array([rng.integers(a, b + 1) for a, b in zip(lo, hi)])
        else:
            c = centres[int(rng.integers(len(centres)))].astype(np.int64)
            j = np.floor(self.centre_jitter * (patch // 2)).astype(np.int64)
            start = c - patch // 2 + np.array([rng.integers(-a, a + 1) for a in j])
        roi = None
        if self.margin_mm_range is not None and self.items[n].fg_box is not None:
            lo, hi = self.margin_mm_range
            m = rng.uniform(lo, hi, size=(3, 2)) / np.array(self.items[n].spacing_zyx)[:, None]
            roi = tuple((int(a - np.ceil(ma)), int(b + np.ceil(mb))) for (a, b), (ma, mb) in zip(self.items[n].fg_box, m))
        return n, kind, start.astype(np.int64), roi

    def __getitem__(self, index: int) -> Dict[str, Any]:
        n, kind, start, roi = self.draw(index)
        item = self.items[n]
        box = tuple((int(s), int(s) + p) for s, p in zip(start, self.patch_size))
        crop = Crop(box, item.shape)
        img = crop.apply(item.image(), fill=self.pad_hu)
        lab = crop.apply(item.label(), fill=0)
        if roi is not None:
            # keep only the simulated region of interest, in patch coordinates
            inside = Crop(tuple((a - s, b - s) for (a, b), (s, _) in zip(roi, box)), img.shape)
            keep = inside.invert(np.ones(inside.out_shape, bool), fill=False)
            img[~keep] = np.int16(self.pad_hu)
            lab[~keep] = 0
        return {
            "image": normalise(img, self.stage)[None],
            "label": stage_target(lab, self.stage) if self.target == "stage" else lab,
            "case_id": item.case_id,
            "item": item.name,
            "kind": kind,
            "start": start,
        }
