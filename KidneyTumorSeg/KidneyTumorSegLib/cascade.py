"""Report 000's four-stage cascade, independent of how each stage predicts.

(1) coarse kidney+tumor foreground at ~3.4 mm -> ROI box with a margin;
(2) fine kidney+tumor foreground in the ROI -> the largest components are
    the kidneys (two, or one where there is one);
(3) tumor probability on each kidney's crop with everything outside that
    kidney set to -1024 HU;
(4) tumor candidates = connected components, kept when their mean
    probability is at least the candidate threshold (report 000: 0.8).

A stage predictor is anything with ``predict(volume) -> probabilities``
where ``volume`` is a :class:`Volume` in HU on the stage's grid (its
geometry says where it is in the world) and the result is a float array
``(C, k, j, i)`` on that grid. Networks (``StageNetwork``) and exact
reference predictors (``reference.ReferencePredictor``) both fit.

All decisions (thresholds, components, candidate scores) are taken on the
canonical full-resolution grid, so the output needs only the reorientation
undone to be on the input grid voxel for voxel.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import cc3d
import numpy as np
from scipy import ndimage

from . import measure, plausibility
from .config import PostprocessConfig, StageConfig
from .findings import CascadeResult, Candidate, Kidney
from .geometry import Box, Crop, canonical_reorient, expand_box, resample_record
from .volume import InputError, RoiWorld, Volume  # noqa: F401 (RoiWorld is part of this module's API)

log = logging.getLogger(__name__)

Progress = Callable[[str, float, str], None]  # (stage, fraction of that stage 0..1, message)


_GROWTH_STOP = 0.02  # no growth pass when kept tumor reaches past the region by at most this fraction of its volume


class NoKidneyFound(InputError):
    pass


def _noop(stage: str, fraction: float, message: str = "") -> None:
    pass


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
    """
    progress = progress or _noop
    timings: Dict[str, float] = {}
    messages: List[str] = []
    t0 = time.perf_counter()
    progress("prepare", 0.0, "reorienting")
    reo = canonical_reorient(image)
    can = reo.volume(image)
    spacing = can.spacing_zyx
    timings["prepare"] = time.perf_counter() - t0
    progress("prepare", 1.0, "")

    # ---- stage 1: region of interest -------------------------------------
    t = time.perf_counter()
    progress("roi", 0.0, "locating kidneys")
    if roi is not None:
        roi_box = _world_box_to_index(can, roi)
        messages.append("region of interest given by the user; stage 1 skipped")
    elif "roi" in stages:
        roi_box = _stage_roi(can, stages["roi"], predictors["roi"])
    else:
        roi_box = tuple((0, n) for n in can.shape)
    timings["roi"] = time.perf_counter() - t
    progress("roi", 1.0, "")
    if roi_box is None:
        return _empty(image, can, reo, ["no kidney found: the localisation stage found no kidney-like tissue"], timings, keep_canonical)

    # ---- stage 2: kidneys ------------------------------------------------
    t = time.perf_counter()
    progress("kidney", 0.0, "segmenting kidneys")
    kstage = stages["kidney"]
    roi_crop = Crop(roi_box, can.shape)
    roi_vol = roi_crop.volume(can, fill=kstage.mask_value)
    fg_prob = _predict_on_grid(roi_vol, kstage, predictors["kidney"])
    fg = fg_prob >= kstage.threshold
    del fg_prob
    comps = _largest_components(fg, kstage.keep_components, kstage.min_component_ml, roi_vol.voxel_volume_ml())
    timings["kidney"] = time.perf_counter() - t
    progress("kidney", 1.0, "")
    if not comps:
        return _empty(image, can, reo, ["no kidney found: the kidney stage found no kidney in the region of interest"], timings, keep_canonical)

    midline, spine_notes = _patient_midline(can, roi_box[0])
    kidneys_masks, side_notes = _assign_sides(comps, roi_vol, midline, post.horseshoe_crossing_mm)
    side_notes = spine_notes + side_notes
    midline_x = midline.x

    # ---- stage 3 + 4: tumors per kidney, candidate choice ------------------
    t = time.perf_counter()
    tstage = stages.get("tumor")
    label = np.zeros(can.shape, np.uint8)
    sides = np.zeros(can.shape, np.uint8)
    cand_map = np.zeros(can.shape, np.uint16)
    kidneys: List[Kidney] = []
    candidates: List[Candidate] = []
    next_id = 1
    specks = 0  # components of the tumor mask under post.min_listed_ml: counted, not listed
    roi_offset = tuple(r0 for r0, _ in roi_box)
    for n, (side, mask_roi) in enumerate(kidneys_masks):
        progress("tumor", n / len(kidneys_masks), f"tumors in the {side} kidney")
        if tstage is None:  # a model of kidneys only: the kidney as stage 2 found it, no candidates
            kc = kidney_crop(can, mask_roi, roi_offset, kstage)
            kmask, comps_scored, cc, n_specks = kc.mask, [], None, 0
        else:
            kc, kmask, comps_scored, cc, n_specks = _tumor_passes(can, mask_roi, roi_offset, tstage,
                                                                  predictors["tumor"], post)
        specks += n_specks
        kbox, kvol = kc.box, kc.volume
        kept_mask = np.zeros(kmask.shape, bool)
        if comps_scored:
            ncomp = len(comps_scored)
            kept_flags = np.zeros(ncomp + 1, bool)
            outside_flags = np.zeros(ncomp + 1, bool)
            for c, sc in enumerate(comps_scored, start=1):
                kept_flags[c] = not sc.why
                outside_flags[c] = sc.why.startswith(_OUTSIDE)
                k_idx, j_idx, i_idx = (np.mean(a) + s.start for a, s in zip(np.nonzero(sc.sub), sc.sl))
                centre = tuple(round(float(v), 2) for v in kvol.index_to_world([i_idx, j_idx, k_idx]))
                candidates.append(Candidate(
                    id=next_id + c - 1, kidney_index=n, side=side, volume_ml=round(sc.vol_ml, 3),
                    axial_diameter_mm=round(measure.max_axial_diameter_mm(sc.sub, spacing), 2),
                    diameter_3d_mm=round(measure.max_diameter_3d_mm(sc.sub, spacing), 2),
                    mean_probability=round(sc.score, 4), kept=not sc.why, centre_lps_mm=centre,
                    core_hu=round(sc.hu, 1), rejected_because=sc.why, kidney_contact=round(sc.contact, 3),
                ))
            ids = np.where(cc > 0, cc.astype(np.int64) + (next_id - 1), 0).astype(np.uint16)
            _paste(cand_map, kbox, ids)
            kept_mask = kept_flags[cc]
            # a candidate judged outside the kidney is not kidney either (other rejected ones stay kidney)
            kmask = kmask & ~outside_flags[cc]
            next_id += ncomp
        # merge: the kidney component, then kept tumors on top
        kidney_full = kmask | kept_mask
        _paste(label, kbox, np.where(kmask, 1, 0).astype(np.uint8))
        _paste(label, kbox, np.where(kept_mask, 2, 0).astype(np.uint8))
        side_val = 2 if side == "right" else 1
        if side == "horseshoe":
            side_arr = _split_sides(kvol, kidney_full, midline_x)
        else:
            side_arr = np.where(kidney_full, side_val, 0).astype(np.uint8)
        _paste(sides, kbox, side_arr)
        ml = kvol.voxel_volume_ml()
        kidneys.append(Kidney(
            index=n, side=side,
            volume_ml=round(float((kmask & ~kept_mask).sum()) * ml, 3),
            volume_with_tumor_ml=round(float(kidney_full.sum()) * ml, 3),
            centre_lps_mm=_centre_world(kvol, kmask),
            touches_fov_edge=_touches_edge(mask_roi, roi_box, can.shape),
        ))
    timings["tumor"] = time.perf_counter() - t
    progress("tumor", 1.0, "")
    progress("candidates", 1.0, "")

    messages.extend(_describe(kidneys, candidates, post, specks, side_notes, tumors=tstage is not None))
    plausible = plausibility.check(can, label, sides, cand_map, kidneys, candidates, midline_x)
    to_input = lambda a: image.with_array(reo.invert(a), meta={})  # noqa: E731
    lo, hi = _index_box_to_world(can, roi_box)
    return CascadeResult(
        status="ok" if plausible["plausible"] else "implausible",
        plausibility=plausible,
        label=to_input(label),
        sides=to_input(sides),
        candidates=to_input(cand_map),
        kidneys=kidneys,
        tumors=candidates,
        specks_not_listed=specks,
        messages=messages,
        timings_s=timings,
        roi_lps_mm=(lo, hi),
        canonical_image=can if keep_canonical else None,
        canonical_label=can.with_array(label) if keep_canonical else None,
    )


# --------------------------------------------------------------------------
@dataclass(frozen=True)
class KidneyCrop:
    """Stage 3's input for one kidney (canonical full-resolution grid).

    ``box``: the crop in the canonical image's index space ``(k, j, i)``;
    ``box_in_mask``: the same box relative to the kidney mask's array;
    ``volume``: the crop in HU, outside the dilated kidney set to the stage's
    ``mask_value`` when ``mask_outside``; ``mask``: the kidney on the crop;
    ``allowed``: the dilated kidney, where tumor candidates may lie.
    """

    box: Box
    box_in_mask: Box
    volume: Volume
    mask: np.ndarray
    allowed: np.ndarray


def kidney_crop(can: Volume, mask: np.ndarray, offset: Sequence[int], stage: StageConfig) -> KidneyCrop:
    """Crop ``can`` around the kidney ``mask`` (an array placed at ``offset`` in ``can``).

    Report 000's stage 3 input: the kidney's box plus ``stage.margin_mm``,
    with everything outside the kidney (dilated by ``stage.mask_dilation_mm``)
    set to ``stage.mask_value`` (-1024 HU). Training builds its tumor-stage
    samples with this same function.
    """
    spacing = can.spacing_zyx
    box_in_mask = expand_box(_tight_box(mask), [stage.margin_mm / s for s in spacing])
    box = tuple((a + o, b + o) for (a, b), o in zip(box_in_mask, offset))
    vol = Crop(box, can.shape).volume(can, fill=stage.mask_value)
    kmask = Crop(box_in_mask, mask.shape).apply(mask, fill=False)
    allowed = _dilate_mm(kmask, stage.mask_dilation_mm, spacing)
    if stage.mask_outside:
        arr = vol.array.copy()
        arr[~allowed] = np.asarray(stage.mask_value).astype(arr.dtype)
        vol = vol.with_array(arr)
    return KidneyCrop(box, box_in_mask, vol, kmask, allowed)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Scored:
    """One tumor candidate of a crop: its bounding slices, its voxels there, and stage 4's verdict."""

    sl: Tuple[slice, ...]
    sub: np.ndarray
    vol_ml: float
    score: float
    hu: float
    contact: float
    why: str  # "" = kept


def _kidney_contact(cand: np.ndarray, kidney: np.ndarray, spacing_zyx) -> float:
    """Fraction of the surface of ``cand`` (by area: voxel faces weighted by their size) that borders ``kidney``.

    Faces on the arrays' edge count as surface that does not border the kidney.
    """
    cand = np.pad(cand, 1)
    kid = np.pad(kidney & ~cand[1:-1, 1:-1, 1:-1], 1)
    total = touch = 0.0
    for axis in range(3):
        lo = tuple(slice(0, -1) if a == axis else slice(None) for a in range(3))
        hi = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        area = float(np.prod([s for a, s in enumerate(spacing_zyx) if a != axis]))
        total += np.count_nonzero(cand[lo] ^ cand[hi]) * area
        touch += (np.count_nonzero(cand[lo] & kid[hi]) + np.count_nonzero(cand[hi] & kid[lo])) * area
    return float(touch / total) if total else 0.0


def _score_candidates(tprob: np.ndarray, kvol: Volume, post: PostprocessConfig, kidney: np.ndarray,
                      first: np.ndarray):
    """Stage 4 on one crop: connected components of the tumor mask, each scored and judged.

    ``kidney``: stage 2's kidney on the crop, what a candidate's contact is measured against;
    ``first``: the first pass's region on the crop. Contact is measured on the part of a candidate
    inside it, so a growth pass, which only adds voxels outside it, does not change a tumor's verdict.
    Components under ``post.min_listed_ml`` are specks: removed from the component map, only counted.
    Returns the component map, the scored candidates (map value = position + 1) and the number of specks.
    """
    cc, ncomp = cc3d.connected_components(tprob >= post.tumor_threshold, connectivity=26, return_N=True)
    out: List[_Scored] = []
    specks = 0
    vox_ml = kvol.voxel_volume_ml()
    counts = np.bincount(cc.ravel(), minlength=ncomp + 1)[1:]
    if ncomp and post.min_listed_ml > 0:
        small = counts * vox_ml < post.min_listed_ml
        if small.any():
            specks = int(small.sum())
            keep = np.flatnonzero(~small)
            remap = np.zeros(ncomp + 1, cc.dtype)
            remap[keep + 1] = np.arange(1, keep.size + 1)
            cc, counts, ncomp = remap[cc], counts[keep], int(keep.size)
    if ncomp:
        # one pass over the crop for all components: an untrained or uncertain model can give hundreds
        means = ndimage.mean(tprob, cc, index=np.arange(1, ncomp + 1))
        for c, sl in enumerate(ndimage.find_objects(cc), start=1):
            sub = cc[sl] == c
            vol_ml = float(counts[c - 1]) * vox_ml
            score = float(means[c - 1])
            hu = _core_hu(kvol.array[sl], sub, kvol.spacing_zyx)
            # one voxel more on each side: the kidney it borders
            wide = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
            contact = _kidney_contact((cc[wide] == c) & first[wide], kidney[wide], kvol.spacing_zyx)
            out.append(_Scored(sl, sub, vol_ml, score, hu, contact, _rejection(score, vol_ml, hu, contact, post)))
    return cc, out, specks


def _tumor_passes(can: Volume, mask: np.ndarray, offset: Sequence[int], stage: StageConfig, predictor,
                  post: PostprocessConfig):
    """Stage 3 (and 4's scoring) on one kidney, grown over tumor that stage 2 left out.

    Stage 3 sees the kidney dilated by ``stage.mask_dilation_mm``, so a tumor
    that bulges out of the kidney where stage 2 missed it is cut at that rim.
    When kept candidates reach into the rim (by more than ``_GROWTH_STOP`` of
    their volume), the pass is repeated with the region widened to the kept
    candidates dilated by ``post.tumor_growth_mm``, at most
    ``post.tumor_growth_passes`` more times. A growth pass decides only the
    voxels it adds; the earlier passes' probabilities stand where they looked.
    Returns the last pass's crop, stage 2's kidney on it, its scored candidates, their component map and
    the number of specks not listed (see :func:`_score_candidates`).
    """
    spacing = can.spacing_zyx
    seen = first = None
    kidney0, offset0 = mask, offset
    for p in range(post.tumor_growth_passes + 1):
        kc = kidney_crop(can, mask, offset, stage)
        # the kidney is stage 2's (a growth pass's region is wider), on this crop
        kidney = Crop(tuple((a - o, b - o) for (a, b), o in zip(kc.box, offset0)), kidney0.shape).apply(kidney0, fill=False)
        tprob = _predict_on_grid(kc.volume, stage, predictor)
        tprob[~kc.allowed] = 0.0
        if seen is not None:
            # where an earlier pass looked, its answer stands (stage 3 saw the context it was trained
            # with there; a wider one can change it): a growth pass only decides the voxels it adds.
            # The region only grows, so this crop holds the earlier one.
            box, prob, allowed = seen
            part = tprob[tuple(slice(a - c, b - c) for (a, b), (c, _) in zip(box, kc.box))]
            part[allowed] = prob[allowed]
        seen = (kc.box, tprob, kc.allowed)
        first = first or seen
        # the first pass's region on this crop: kidney contact is measured there
        first_here = np.zeros(kc.allowed.shape, bool)
        first_here[tuple(slice(a - c, b - c) for (a, b), (c, _) in zip(first[0], kc.box))] = first[2]
        cc, scored, specks = _score_candidates(tprob, kc.volume, post, kidney, first_here)
        if p == post.tumor_growth_passes:
            break
        kept = np.zeros(kc.mask.shape, bool)
        for sc in scored:
            if not sc.why:
                kept[sc.sl] |= sc.sub
        grown = kept & ~kc.mask
        if not grown.any() or grown.sum() <= _GROWTH_STOP * kept.sum():
            break
        log.debug("tumor growth pass %d: kept candidates reach %.1f mL past the region", p + 1,
                  grown.sum() * kc.volume.voxel_volume_ml())
        # the next region: this one plus the kept candidates dilated by tumor_growth_mm (kidney_crop adds
        # mask_dilation_mm), on a frame padded so the dilation is not cut by this crop's box
        extra = max(post.tumor_growth_mm - stage.mask_dilation_mm, 0.0)
        pad = [int(np.ceil(extra / s)) + 1 for s in spacing]
        inner = tuple(slice(q, q + n) for q, n in zip(pad, kc.mask.shape))
        frame = np.zeros(tuple(n + 2 * q for n, q in zip(kc.mask.shape, pad)), bool)
        frame[inner] = kept
        frame = _dilate_mm(frame, extra, spacing)
        frame[inner] |= kc.mask
        mask, offset = frame, tuple(a - q for (a, _), q in zip(kc.box, pad))
    return kc, kidney, scored, cc, specks


def _predict_on_grid(vol: Volume, stage: StageConfig, predictor) -> np.ndarray:
    """Foreground probability of ``stage`` on ``vol``'s own grid (float32, (k, j, i)).

    Resamples to the stage spacing, predicts, and resamples the probability
    back linearly, so thresholds are applied at the output resolution.
    """
    rec = resample_record(vol.shape, vol.spacing_zyx, vol.spacing_zyx if stage.native_grid else stage.spacing)
    src = vol.array if rec.is_identity else vol.array.astype(np.float32, copy=False)
    svol = rec.volume(vol, array=rec.apply(src, order=1))
    probs = np.asarray(predictor.predict(svol))
    if probs.ndim != 4 or tuple(probs.shape[1:]) != svol.shape:
        raise RuntimeError(f"stage {stage.name!r}: predictor returned shape {probs.shape}, expected (C,)+{svol.shape}")
    fg = np.ascontiguousarray(stage.foreground(probs), dtype=np.float32)
    del probs
    return rec.invert(fg, order=1)


def _stage_roi(can: Volume, stage: StageConfig, predictor) -> Optional[Box]:
    rec = resample_record(can.shape, can.spacing_zyx, can.spacing_zyx if stage.native_grid else stage.spacing)
    coarse = rec.volume(can, array=rec.apply(can.array.astype(np.float32), order=1))
    # only the body can hold a kidney: skipping the air around it saves windows (the padding is air too)
    body = _body_box(coarse.array, stage.mask_value)
    sub = Crop(body, coarse.shape).volume(coarse, fill=stage.mask_value)
    probs = np.asarray(predictor.predict(sub))
    fg = stage.foreground(probs) >= stage.threshold
    comps = _largest_components(fg, stage.keep_components, stage.min_component_ml, coarse.voxel_volume_ml())
    if not comps:
        return None
    factor = np.array(can.shape, float) / np.array(coarse.shape, float)
    boxes = []
    for m in comps:
        b = tuple((a + o, e + o) for (a, e), (o, _) in zip(_tight_box(m), body))
        boxes.append(tuple((int(np.floor(a * f)), int(np.ceil(e * f))) for (a, e), f in zip(b, factor)))
    lo = [min(b[n][0] for b in boxes) for n in range(3)]
    hi = [max(b[n][1] for b in boxes) for n in range(3)]
    margin = [stage.margin_mm / s for s in can.spacing_zyx]
    return expand_box(tuple(zip(lo, hi)), margin, shape=can.shape)


def _body_box(coarse: np.ndarray, air_hu: float) -> Box:
    """Box ``(k, j, i)`` around everything denser than air (> -500 HU) plus two voxels; the whole array if none."""
    dense = coarse > max(-500.0, air_hu + 1.0)
    if not dense.any():
        return tuple((0, n) for n in coarse.shape)  # type: ignore[return-value]
    return expand_box(_tight_box(dense), (2, 2, 2), shape=coarse.shape)


def _largest_components(mask: np.ndarray, keep: int, min_ml: float, voxel_ml: float) -> List[np.ndarray]:
    """The ``keep`` largest 26-connected components at least ``min_ml`` large, largest first."""
    if not mask.any():
        return []
    cc, n = cc3d.connected_components(mask, connectivity=26, return_N=True)
    counts = np.bincount(cc.ravel(), minlength=n + 1)[1:]
    order = np.argsort(-counts, kind="stable")
    out = []
    for c in order[: max(keep, 0)]:
        if counts[c] * voxel_ml < min_ml or counts[c] == 0:
            continue
        out.append(cc == (c + 1))
    return out


@dataclass(frozen=True)
class Midline:
    """The patient's midline (LPS x, mm) and whether the body is cut by the field of view on either side.

    With the body cut on the patient's right (``cut_right``), the visible body's centre lies left of the
    true midline, so what lies left of ``x`` is certainly left; likewise for ``cut_left``.
    """

    x: float
    cut_right: bool = False
    cut_left: bool = False
    from_spine: bool = False  # x is the vertebral column's, not the visible body's centre: no cut moves it

    def certain(self, side: str) -> bool:
        """True when a kidney named ``side`` from this midline is on that side whatever the cut part held."""
        if self.from_spine:
            return True
        if side == "left":
            return not self.cut_left
        return not self.cut_right

    @property
    def one_sided_cut(self) -> bool:
        return self.cut_left != self.cut_right and not self.from_spine


_BONE_HU = 300.0  # above enhanced renal cortex and vessels in the portal phase; the vertebra's shell and body
_MIN_VERTEBRA_CM2 = 3.0


def _spine_x(can: Volume, zrange: Tuple[int, int]) -> Optional[float]:
    """LPS x (mm) of the vertebral column at the kidneys' levels, or None where it is not found.

    In up to 12 axial slices of ``zrange`` (canonical k), the largest 2D bone component (> 300 HU,
    at least 3 cm2) is the vertebra at these levels (ribs are thinner, the pelvis lower). The
    vertebral column is a column: the median x of the slices whose component centre lies within
    10 mm (in x) of the median, when at least half the slices do; otherwise (the spine cut away,
    and the largest pieces are ribs here and there) None.
    """
    step = max(1, int(round(2.0 / min(can.spacing[:2]))))
    k0, k1 = max(0, int(zrange[0])), min(can.shape[0], int(zrange[1]))
    if k1 <= k0:
        return None
    ks = np.unique(np.linspace(k0, k1 - 1, num=min(12, k1 - k0)).astype(int))
    pix_cm2 = (can.spacing[0] * step) * (can.spacing[1] * step) / 100.0
    xs = []
    for k in ks:
        bone = can.array[k, ::step, ::step] > _BONE_HU
        if not bone.any():
            continue
        cc = cc3d.connected_components(bone, connectivity=8)
        counts = np.bincount(cc.ravel())[1:]
        c = int(np.argmax(counts))
        if counts[c] * pix_cm2 < _MIN_VERTEBRA_CM2:
            continue
        jj, ii = np.nonzero(cc == c + 1)
        xs.append(can.index_to_world([float(ii.mean()) * step, float(jj.mean()) * step, float(k)])[:2])
    if len(xs) * 2 < len(ks):
        return None
    centres = np.asarray(xs, float)
    column = np.abs(centres[:, 0] - np.median(centres[:, 0])) <= 10.0
    if int(column.sum()) * 2 < len(ks):
        return None
    return float(np.median(centres[column, 0]))


def _midline_x(can: Volume) -> Midline:
    """Patient midline (LPS x, mm): centre of the body's extent in x, and where the field of view cuts the body.

    The body is the largest air-separated object in a coarse copy; its
    mid-x is robust to one-sided anatomy (one kidney) and to the couch.
    The canonical grid's i axis runs along +x (the patient's left).
    """
    step = max(1, int(round(4.0 / min(can.spacing[:2]))))
    zs = max(1, can.shape[0] // 16)
    small = can.array[::zs, ::step, ::step] > -500
    if not small.any():
        return Midline(float(can.index_to_world(np.array(can.shape[::-1]) / 2.0)[0]))
    cc, n = cc3d.connected_components(small, connectivity=6, return_N=True)
    counts = np.bincount(cc.ravel())[1:]
    body = cc == (int(np.argmax(counts)) + 1)
    cols = np.nonzero(body.any(axis=(0, 1)))[0]
    mid_i = (cols.min() + cols.max()) / 2.0 * step
    x = float(can.index_to_world([mid_i, can.shape[1] / 2.0, can.shape[0] / 2.0])[0])
    return Midline(x, cut_right=bool(cols.min() == 0), cut_left=bool(cols.max() == small.shape[2] - 1))


def _patient_midline(can: Volume, zrange: Tuple[int, int]) -> Tuple[Midline, List[str]]:
    """The midline kidneys are named from, and a message when it is the spine's.

    The visible body's centre, unless the field of view cuts the body on one side only: that moves the
    centre by what the cut took, the spine's x (at the slices of ``zrange``) not.
    """
    midline = _midline_x(can)
    if not midline.one_sided_cut:
        return midline, []
    sx = _spine_x(can, zrange)
    if sx is None:
        return midline, []
    cut = "right" if midline.cut_right else "left"
    return (Midline(sx, midline.cut_right, midline.cut_left, from_spine=True),
            [f"the field of view cuts the body on the patient's {cut}: left and right are named from the spine"])


def _assign_sides(comps, roi_vol: Volume, midline: Midline, crossing_mm: float):
    """Name each kidney component left / right / horseshoe (LPS: +x is the patient's left).

    Returns ``[(side, mask)]`` and the messages it has for the user. Two components on one side of
    the midline are anatomically unlikely (crossed ectopia is rare; more often one of them is not
    kidney): where that side is certain (the field of view does not cut the body on the other
    side) both keep its name and a message asks for a check; otherwise the midline is probably
    misplaced by the cut, and the more left one is named left.
    """
    out, notes = [], []
    for m in comps:
        xs = _world_x_extent(roi_vol, m)
        cx = _centre_world(roi_vol, m)[0]
        # a body cut on one side only moves the estimate into that side's kidney: no horseshoe from it
        if xs[0] < midline.x - crossing_mm and xs[1] > midline.x + crossing_mm and not midline.one_sided_cut:
            side = "horseshoe"
        else:
            side = "left" if cx > midline.x else "right"
        out.append((side, m))
    if len(out) == 2 and out[0][0] == out[1][0] and "horseshoe" not in (out[0][0], out[1][0]):
        side = out[0][0]
        if midline.certain(side):
            notes.append(f"two kidney-like components on the patient's {side}, both listed as {side} kidneys: one of "
                         "them is probably not kidney (or a crossed ectopic kidney); check both")
        else:
            a, b = out
            ax, bx = _centre_world(roi_vol, a[1])[0], _centre_world(roi_vol, b[1])[0]
            out = [("left" if ax > bx else "right", a[1]), ("left" if bx >= ax else "right", b[1])]
            cut = " and ".join(n for n, c in (("right", midline.cut_right), ("left", midline.cut_left)) if c)
            notes.append(f"the field of view cuts the body on the patient's {cut}: "
                         "the midline is uncertain, and the two kidneys were named by their position to each other")
    return out, notes


def _world_x_extent(vol: Volume, mask: np.ndarray) -> Tuple[float, float]:
    b = _tight_box(mask)
    corners = np.array([[i, j, k] for k in b[0] for j in b[1] for i in b[2]], float)
    corners[:, 0] -= 0.5
    xs = vol.index_to_world(corners)[:, 0]
    return float(xs.min()), float(xs.max())


def _split_sides(vol: Volume, mask: np.ndarray, midline_x: float) -> np.ndarray:
    i = np.arange(vol.shape[2], dtype=float)
    xs = vol.index_to_world(np.stack([i, np.zeros_like(i), np.zeros_like(i)], -1))[:, 0]
    left_cols = xs > midline_x
    out = np.zeros(mask.shape, np.uint8)
    out[mask & left_cols[None, None, :]] = 1
    out[mask & ~left_cols[None, None, :]] = 2
    return out


def _dilate_mm(mask: np.ndarray, mm: float, spacing_zyx) -> np.ndarray:
    if mm <= 0 or not mask.any():
        return mask.copy()
    box = expand_box(_tight_box(mask), [mm / s + 1 for s in spacing_zyx], shape=mask.shape)
    sl = tuple(slice(a, b) for a, b in box)
    dist = ndimage.distance_transform_edt(~mask[sl], sampling=spacing_zyx)
    out = np.zeros_like(mask)
    out[sl] = dist <= mm
    return out


def _tight_box(mask: np.ndarray) -> Box:
    out = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        idx = np.nonzero(mask.any(axis=other))[0]
        out.append((int(idx[0]), int(idx[-1]) + 1))
    return tuple(out)  # type: ignore[return-value]


def _paste(dst: np.ndarray, box: Box, src: np.ndarray) -> None:
    """Write the non-zero voxels of ``src`` (covering ``box``) into ``dst``, clipped to ``dst``."""
    s_dst, s_src = [], []
    for (a, b), n in zip(box, dst.shape):
        lo, hi = max(a, 0), min(b, n)
        s_dst.append(slice(lo, hi))
        s_src.append(slice(lo - a, hi - a))
    region = dst[tuple(s_dst)]
    part = src[tuple(s_src)]
    nz = part != 0
    region[nz] = part[nz]


def _centre_world(vol: Volume, mask: np.ndarray) -> Tuple[float, float, float]:
    k, j, i = (float(np.mean(a)) for a in np.nonzero(mask))
    return tuple(round(float(v), 2) for v in vol.index_to_world([i, j, k]))  # type: ignore[return-value]


def _touches_edge(mask_roi: np.ndarray, roi_box: Box, shape) -> bool:
    """Whether the kidney reaches the scan's first or last voxel on any axis."""
    b = _tight_box(mask_roi)
    for n in range(3):
        lo = b[n][0] + roi_box[n][0]
        hi = b[n][1] + roi_box[n][0]
        if lo <= 0 or hi >= shape[n]:
            return True
    return False


def _world_box_to_index(can: Volume, roi: RoiWorld) -> Box:
    corners = np.array([[x, y, z] for x in (roi.lo[0], roi.hi[0]) for y in (roi.lo[1], roi.hi[1]) for z in (roi.lo[2], roi.hi[2])])
    idx = can.world_to_index(corners)  # (i, j, k)
    lo = np.floor(idx.min(axis=0) + 0.5).astype(int)
    hi = np.ceil(idx.max(axis=0) + 0.5).astype(int)
    box = tuple((int(max(lo[a], 0)), int(min(hi[a], can.shape[2 - a]))) for a in (2, 1, 0))
    if any(b <= a for a, b in box):
        raise InputError("the region of interest does not overlap the image")
    return box  # type: ignore[return-value]


def _index_box_to_world(can: Volume, box: Box):
    lo = can.index_to_world([box[2][0] - 0.5, box[1][0] - 0.5, box[0][0] - 0.5])
    hi = can.index_to_world([box[2][1] - 0.5, box[1][1] - 0.5, box[0][1] - 0.5])
    return tuple(round(float(v), 2) for v in np.minimum(lo, hi)), tuple(round(float(v), 2) for v in np.maximum(lo, hi))


def _core_hu(hu: np.ndarray, mask: np.ndarray, spacing_zyx, depth_mm: float = 2.0) -> float:
    """Median HU of a candidate's core (voxels at least ``depth_mm`` inside it), as a radiologist places a
    measurement ROI in a lesion's centre to avoid partial volume with its wall; all voxels when none is that deep."""
    inner = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing_zyx)[1:-1, 1:-1, 1:-1] >= depth_mm
    core = inner if inner.any() else mask
    return float(np.median(hu[core]))


_OUTSIDE = "borders the kidney"
_SMALL = "too small"


def _rejection(score: float, vol_ml: float, hu: float, contact: float, post: PostprocessConfig) -> str:
    """Why stage 4 rejects a candidate ("" = kept): probability first, then size, kidney contact, water attenuation."""
    if score < post.candidate_threshold:
        return f"mean probability {score:.2f} < {post.candidate_threshold:g}"
    if vol_ml < post.min_candidate_ml:
        return f"{_SMALL} ({vol_ml:.2f} mL < {post.min_candidate_ml:g} mL)"
    if post.min_kidney_contact is not None and contact < post.min_kidney_contact:
        return (f"{_OUTSIDE} over {100 * contact:.0f} % of its surface (< {100 * post.min_kidney_contact:g} %): "
                "probably outside the kidney")
    if post.cyst_max_hu is not None and hu <= post.cyst_max_hu:
        return f"water attenuation (core {hu:.0f} HU <= {post.cyst_max_hu:g}): probable simple cyst"
    return ""


def _describe(kidneys: Sequence[Kidney], cands: Sequence[Candidate], post: PostprocessConfig,
              specks: int = 0, side_notes: Sequence[str] = (), tumors: bool = True) -> List[str]:
    msgs = []
    sides = [k.side for k in kidneys]
    if sides == ["horseshoe"]:
        msgs.append("one horseshoe kidney found (crossing the midline); it is split at the midline into left and right segments")
    elif len(kidneys) == 1:
        msgs.append(f"one kidney found ({sides[0]}); no second kidney was detected")
    else:
        msgs.append(f"{len(kidneys)} kidneys found ({', '.join(sides)})")
    for k in kidneys:
        if k.touches_fov_edge:
            msgs.append(f"the {k.side} kidney reaches the edge of the scan: its volume may be underestimated")
    msgs.extend(side_notes)
    kept = [c for c in cands if c.kept]
    rejected = [c for c in cands if not c.kept]
    if kept:
        msgs.append(f"{len(kept)} tumor(s) kept (mean probability >= {post.candidate_threshold:g}): " +
                    ", ".join(f"{c.side} {c.diameter_3d_mm:.0f} mm" for c in kept))
    elif tumors:
        msgs.append("no tumor found")
    else:
        msgs.append("the model has no tumor stage: kidneys only, no tumor was looked for")
    cysts = [c for c in rejected if c.rejected_because.startswith("water attenuation")]
    outside = [c for c in rejected if c.rejected_because.startswith(_OUTSIDE)]
    small = [c for c in rejected if c.rejected_because.startswith(_SMALL)]
    if len(rejected) > len(cysts) + len(outside) + len(small):
        msgs.append(f"{len(rejected) - len(cysts) - len(outside) - len(small)} candidate(s) rejected below the threshold "
                    f"{post.candidate_threshold:g}")
    if outside:
        msgs.append(f"{len(outside)} candidate(s) bordering the kidney over less than {100 * post.min_kidney_contact:g} % "
                    "of their surface rejected as probably outside the kidney: " +
                    ", ".join(f"{c.side} {c.diameter_3d_mm:.0f} mm, {100 * c.kidney_contact:.0f} %" for c in outside))
    if cysts:
        msgs.append(f"{len(cysts)} candidate(s) of water attenuation (core <= {post.cyst_max_hu:g} HU) rejected as probable "
                    "simple cysts: " + ", ".join(f"{c.side} {c.diameter_3d_mm:.0f} mm, {c.core_hu:.0f} HU" for c in cysts))
    if small:
        msgs.append(f"{len(small)} candidate(s) under {post.min_candidate_ml:g} mL rejected as too small: " +
                    ", ".join(f"{c.side} {c.volume_ml:.2f} mL" for c in small))
    if specks:
        msgs.append(f"{specks} speck(s) of tumor probability under {post.min_listed_ml:g} mL not listed as candidates")
    return msgs


def _empty(image: Volume, can: Volume, reo, messages, timings, keep_canonical) -> CascadeResult:
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
