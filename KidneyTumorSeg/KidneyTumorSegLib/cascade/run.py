"""The cascade's orchestration: the four stages in order, on the canonical grid, timed and reported.

All decisions (thresholds, components, candidate scores) are taken on the
canonical full-resolution grid, so the output needs only the reorientation
undone to be on the input grid voxel for voxel.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from ..findings import plausibility
from ..config import PostprocessConfig, StageConfig
from ..findings.findings import CascadeResult, Candidate, Kidney
from ..findings.nephrometry import kidney_frame, renal_score
from ..findings.terminology import KITS_KIDNEY, KITS_TUMOR
from ..geometry.boxes import Box, box_from_mask
from ..geometry.records import Crop, Reorient, canonical_reorient
from ..geometry.masks import largest_components
from ..geometry.volume import RoiWorld, Volume
from .anatomy import assign_sides, centre_world, patient_midline, split_sides
from .candidates import OUTSIDE, candidate_records
from .describe import describe
from .predict import predict_on_grid
from .roi import NOT_FOUND, index_box_to_world, locate
from .tumors import KidneyTumors, kidney_only, tumor_passes

Progress = Callable[[str, float, str], None]  # (stage, fraction of that stage 0..1, message)


def _noop(stage: str, fraction: float, message: str = "") -> None:
    pass


@contextmanager
def _stage(name: str, message: Optional[str], progress: Progress, timings: Dict[str, float]) -> Iterator[None]:
    """Report ``name`` at 0 (with ``message``; not when None) and 1 around its work, and record its time."""
    t = time.perf_counter()
    if message is not None:
        progress(name, 0.0, message)
    yield
    timings[name] = time.perf_counter() - t
    progress(name, 1.0, "")


def run_cascade(
    image: Volume,
    stages: Mapping[str, StageConfig],
    predictors: Mapping[str, object],
    post: PostprocessConfig = PostprocessConfig(),
    roi: Optional[RoiWorld] = None,
    progress: Optional[Progress] = None,
    keep_canonical: bool = True,
) -> CascadeResult:
    """Segment kidneys and tumors in ``image`` (HU).

    ``stages``/``predictors`` are keyed by role (``roi``, ``kidney``,
    ``tumor``); ``roi`` may be absent (then ``roi`` box or the whole scan is
    the region). Returns a :class:`CascadeResult` on the input grid; when no
    kidney is found its ``status`` is ``"no_kidney"`` and the maps are empty.
    ``progress(stage, fraction, message)`` hears each stage start and end, and
    how far its predictions are in between.
    """
    progress = progress or _noop
    timings: Dict[str, float] = {}
    with _stage("prepare", "reorienting", progress, timings):
        reo = canonical_reorient(image)
        can = reo.volume(image)
    with _stage("roi", "locating kidneys", progress, timings):
        roi_box, messages = locate(can, stages, predictors, roi, lambda f: progress("roi", f, "locating kidneys"))
    if roi_box is None:
        return _empty(image, can, [NOT_FOUND], timings, keep_canonical)
    kstage = stages["kidney"]
    region = Crop(roi_box, can.shape)
    roi_vol = region.volume(can, fill=kstage.mask_value)
    with _stage("kidney", "segmenting kidneys", progress, timings):
        fg = predict_on_grid(roi_vol, kstage, predictors["kidney"],
                             lambda f: progress("kidney", f, "segmenting kidneys")) >= kstage.threshold
        comps = largest_components(fg, kstage.keep_components, kstage.min_component_ml, roi_vol.voxel_volume_ml())
        del fg
        alone = _kidney_alone(can, region, roi_vol, stages, predictors, post) if comps else None
    if not comps:
        return _empty(image, can, ["no kidney found: the kidney stage found no kidney in the region of interest"],
                      timings, keep_canonical)
    midline, spine_notes = patient_midline(can, roi_box[0])
    named, side_notes = assign_sides(comps, roi_vol, midline, post.horseshoe_crossing_mm)
    maps = _Maps.empty(can.shape, alone)
    with _stage("tumor", None, progress, timings):
        for n, (side, mask_roi) in enumerate(named):
            def part(f: float, n: int = n, side: str = side) -> None:
                progress("tumor", (n + f) / len(named), f"tumors in the {side} kidney")

            part(0.0)
            found = _kidney_stages(can, region, mask_roi, stages, predictors, post, part)
            maps.add(n, side, found, region, mask_roi, midline.x)
    progress("candidates", 1.0, "")
    messages.extend(describe(maps.kidneys, maps.candidates, post, maps.specks, spine_notes + side_notes,
                             tumors="tumor" in stages))
    plausible = plausibility.check(can, maps.label, maps.sides, maps.ids, maps.kidneys, maps.candidates, midline.x)
    return _result(image, can, reo, maps, plausible, messages, timings, index_box_to_world(can, roi_box), keep_canonical)


def _kidney_alone(can: Volume, region: Crop, roi_vol: Volume, stages: Mapping[str, StageConfig],
                  predictors: Mapping[str, object], post: PostprocessConfig) -> Optional[np.ndarray]:
    """Report 003's label assignment: the kidney_alone stage's kidney on the canonical grid (None without it)."""
    if post.fusion != "label_assignment" or "kidney_alone" not in stages:
        return None
    stage = stages["kidney_alone"]
    inside = predict_on_grid(roi_vol, stage, predictors["kidney_alone"]) >= stage.threshold
    alone = np.zeros(can.shape, bool)
    region.paste(alone, inside)
    return alone


def _kidney_stages(can: Volume, region: Crop, mask_roi: np.ndarray, stages: Mapping[str, StageConfig],
                   predictors: Mapping[str, object], post: PostprocessConfig, progress) -> KidneyTumors:
    """Stages 3 and 4 on one kidney (``mask_roi``, on ``region``'s grid); stage 2's kidney alone without a tumor stage."""
    if "tumor" not in stages:
        return kidney_only(can, mask_roi, region.start, stages["kidney"])
    return tumor_passes(can, mask_roi, region.start, stages["tumor"], predictors["tumor"], post, progress)


@dataclass
class _Maps:
    """The canonical grid's KiTS labels, kidney sides (1 left, 2 right) and candidate ids, and the findings,
    filled one kidney at a time."""

    label: np.ndarray
    sides: np.ndarray
    ids: np.ndarray
    kidneys: List[Kidney] = field(default_factory=list)
    candidates: List[Candidate] = field(default_factory=list)
    specks: int = 0  # components of the tumor mask under post.min_listed_ml: counted, not listed
    alone: Optional[np.ndarray] = None  # label assignment: where the kidney_alone stage sees kidney

    @classmethod
    def empty(cls, shape, alone: Optional[np.ndarray] = None) -> "_Maps":
        return cls(np.zeros(shape, np.uint8), np.zeros(shape, np.uint8), np.zeros(shape, np.uint16), alone=alone)

    def add(self, n: int, side: str, found: KidneyTumors, region: Crop, mask_roi: np.ndarray, midline_x: float) -> None:
        """Kidney ``n`` named ``side``: its candidates listed, then the kidney and its kept tumors painted on."""
        kc, kmask, crop = found.crop, found.kidney, found.crop.crop
        kvol = kc.volume
        kept_mask = np.zeros(kmask.shape, bool)
        if found.scored:
            cc = found.components
            first_id = len(self.candidates) + 1
            kept_flags = np.array([False] + [not sc.why for sc in found.scored])
            outside_flags = np.array([False] + [sc.why.startswith(OUTSIDE) for sc in found.scored])
            self.candidates.extend(candidate_records(found.scored, first_id, n, side, kvol))
            crop.paste(self.ids, np.where(cc > 0, cc.astype(np.int64) + (first_id - 1), 0).astype(np.uint16))
            kept_mask = kept_flags[cc]
            # a candidate judged outside the kidney is not kidney either (other rejected ones stay kidney)
            kmask = kmask & ~outside_flags[cc]
        self.specks += found.specks
        if self.alone is not None:  # report 003: kidney where both the kidney and kidney_alone stages say so
            kmask = kmask & crop.apply(self.alone, fill=False)
        if found.scored:
            self._nephrometry(first_id, found.components, kmask & ~kept_mask, kept_mask, kvol.spacing_zyx)
        # merge: the kidney component, then kept tumors on top
        kidney_full = kmask | kept_mask
        crop.paste(self.label, np.where(kmask, KITS_KIDNEY, 0).astype(np.uint8))
        crop.paste(self.label, np.where(kept_mask, KITS_TUMOR, 0).astype(np.uint8))
        if side == "horseshoe":
            crop.paste(self.sides, split_sides(kvol, kidney_full, midline_x))
        else:
            crop.paste(self.sides, np.where(kidney_full, 2 if side == "right" else 1, 0).astype(np.uint8))
        ml = kvol.voxel_volume_ml()
        self.kidneys.append(Kidney(
            index=n, side=side,
            volume_ml=round(float((kmask & ~kept_mask).sum()) * ml, 3),
            volume_with_tumor_ml=round(float(kidney_full.sum()) * ml, 3),
            centre_lps_mm=centre_world(kvol, kmask),
            touches_fov_edge=_touches_edge(region.inner(box_from_mask(mask_roi)).box, self.label.shape),
        ))


    def _nephrometry(self, first_id: int, cc: np.ndarray, parenchyma: np.ndarray, kept_mask: np.ndarray,
                     spacing_zyx) -> None:
        """R.E.N.A.L. of this kidney's kept tumors (candidates from ``first_id``; ``cc``: their map on the crop)."""
        kept = [c for c in self.candidates[first_id - 1:] if c.kept]
        if not kept or np.count_nonzero(parenchyma) < 4:
            return
        frame = kidney_frame(parenchyma, kept_mask, spacing_zyx)
        for c in kept:
            c.nephrometry = renal_score(frame, cc == c.id - first_id + 1).to_dict()


def _touches_edge(box: Box, shape: Sequence[int]) -> bool:
    """Whether the box (a kidney's, on the canonical grid) reaches the scan's first or last voxel on any axis."""
    return any(lo <= 0 or hi >= n for (lo, hi), n in zip(box, shape))


def _result(image: Volume, can: Volume, reo: Reorient, maps: _Maps, plausible: dict, messages: List[str],
            timings: Dict[str, float], roi_lps_mm, keep_canonical: bool) -> CascadeResult:
    """The cascade's result on the input grid (the reorientation undone)."""
    def to_input(a: np.ndarray) -> Volume:
        return image.with_array(reo.invert(a), meta={})

    return CascadeResult(
        status="ok" if plausible["plausible"] else "implausible",
        plausibility=plausible,
        label=to_input(maps.label),
        sides=to_input(maps.sides),
        candidates=to_input(maps.ids),
        kidneys=maps.kidneys,
        tumors=maps.candidates,
        specks_not_listed=maps.specks,
        messages=messages,
        timings_s=timings,
        roi_lps_mm=roi_lps_mm,
        canonical_image=can if keep_canonical else None,
        canonical_label=can.with_array(maps.label) if keep_canonical else None,
    )


def _empty(image: Volume, can: Volume, messages: List[str], timings: Dict[str, float],
           keep_canonical: bool) -> CascadeResult:
    """The result when no kidney is found: empty maps on the input grid."""
    z8 = np.zeros(image.shape, np.uint8)
    return CascadeResult(
        status="no_kidney",
        label=image.with_array(z8, meta={}),
        sides=image.with_array(z8.copy(), meta={}),
        candidates=image.with_array(np.zeros(image.shape, np.uint16), meta={}),
        messages=list(messages),
        timings_s=timings,
        canonical_image=can if keep_canonical else None,
        canonical_label=can.with_array(np.zeros(can.shape, np.uint8)) if keep_canonical else None,
    )
