"""Synthetic contrast-enhanced abdominal CT phantoms with KiTS labels.

``make_phantom(seed)`` paints a patient in world coordinates (LPS mm: +x
patient left, +y posterior, +z superior) on an axis-aligned grid: body
outline with skin, subcutaneous fat and muscle wall; lungs above a
two-domed diaphragm, heart; spine (vertebral bodies with cortical shell,
discs, canal, cord, arches, processes), ribs with costal cartilage,
sternum, sacrum and iliac wings; psoas, quadratus lumborum and paraspinal
muscles; aorta (left-anterior of the spine, bifurcating), IVC (right);
liver with portal/hepatic veins, gallbladder, spleen, stomach with an
air-fluid level, pancreas, colon with mottled stool or gas, small-bowel
loops with fluid and gas, bladder; two kidneys (or one, or none) with
cortex, medullary pyramids, sinus fat, pelvis, renal vessels and ureters,
in a perirenal fat capsule; 0-3 tumours (exophytic or endophytic,
lobulated, heterogeneous, some necrotic) and simple cysts. The tissue map
becomes HU by per-tissue look-up, texture, partial-volume blur and CT-like
correlated noise (``phantom_render``). Modules: ``phantom_params`` (codes
and random parameters), ``phantom_body`` (slice-wise anatomy),
``phantom_organs``, ``phantom_kidney``, ``phantom_kits`` (kidneys from a real
label), ``phantom_render``.

Comparison with the one real CT here (``../shared/data/real-abdominal-ct-dicom``,
Philips, 512x512x134, 1.074 mm pixels, 3 mm slices, late-arterial /
corticomedullary look). Real values: ROI medians and the body histogram.
Phantom values: median (min-max) over 8 seeds, default options,
512x512x200 at 0.78 x 0.78 x 2.5 mm, each tissue mask from
``Phantom.tissue`` eroded by 2 voxels. Noise: sd and lag-1 correlation in
8x8-pixel patches inside subcutaneous fat (muscle for the second real
figure), the same method on both.

======================  ========================  ===========================
quantity                real CT                   phantom (default options)
======================  ========================  ===========================
body histogram peaks    -97 fat, 57 soft tissue,  -97 (-102..-87), 52 (47..72),
                        102 enhanced organs       107-117 where liver is large
subcutaneous fat        -97 (p5 -114, p95 -58)    -101 (-109..-92)
muscle                  65 (paraspinal)           52 (51..67)
liver                   103                       103 (83..118)
spleen                  ~128                      121 (112..125)
kidney cortex / medulla ~230 / 55-95              201 (177..220) / 95 (70..137)
aorta                   ~181                      214 (185..282)
vertebral cancellous    240-355                   248 (203..307)
lung                    -764 (vessels, PV)        -818 (-858..-789)
noise sd                8.2 fat, 9.5 muscle       11.7 (8.0..15.7)
noise lag-1 correlation 0.41-0.58 in-plane at     0.6-0.7 in-plane at 0.78 mm
                        1.07 mm; 0.2-0.33 z       (NPS model: ~0.5 at 1.07 mm);
                                                  0.2 (0.1..0.3) z
======================  ========================  ===========================

The default ranges follow those figures: phase drawn from late arterial to
portal venous (kidney cortex 160-240, medulla 60-150), noise 8-16 HU with
``NPS(f) ~ f exp(-(f/f0)^2)``, f0 0.17-0.25 cycles/mm, which reproduces the
real in-plane correlation and its negative side lobe (real lag-2 -0.07 to
-0.24). ``randomize_intensity=True`` widens every range (noise 5-30 HU,
all phases, tissue means jittered, PSF 0.3-1 mm) for domain randomisation.
Not modelled: beam hardening and streaks, excreted contrast, a realistic
pelvis below the hips, fine vessel trees outside the liver.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from .geometry import canonical_reorient
from .phantom_body import paint_slices
from .phantom_field import Grid, make_lattice
from .phantom_kidney import kidney_frame, kidney_info, paint_kidney, paint_lesions, place_lesions
from .phantom_kits import find_kidneys, paint_label_kidneys
from .phantom_io import write_phantom_cases  # noqa: F401  (public API lives here too)
from .phantom_organs import paint_organs
from .phantom_params import (KIDNEY_CODES, NAMES, T, cyst_code, lut, sample_anatomy, sample_intensities,
                             sample_hypervascular, sample_lesion_intensity, tumor_code)
from .phantom_place import axes, measure, place_from_label, place_synthetic, scan_geometry
from .phantom_render import render
from .volume import InputError, Volume

__all__ = ["Phantom", "make_phantom", "write_phantom_cases"]

log = logging.getLogger(__name__)


@dataclass
class Phantom:
    """A synthetic case: ``image`` int16 HU, ``label`` uint8 KiTS labels, ``info`` every parameter.

    ``tissue`` is the painted tissue-code map on the image grid (same array
    order); ``info["tissue_codes"]`` names the codes.
    """

    image: Volume
    label: Volume
    info: Dict[str, Any]
    tissue: Optional[np.ndarray] = None


def make_phantom(seed: int, shape: Optional[Sequence[int]] = None, spacing: Optional[Sequence[float]] = None,
                 n_tumors: Optional[int] = None, n_cysts: Optional[int] = None, kits_label: Optional[Volume] = None, *,
                 kidneys: Optional[str] = None, cyst_label: bool = False, randomize_intensity: bool = False,
                 tumor_diameter_mm: Tuple[float, float] = (10.0, 100.0), phase: Optional[object] = None,
                 noise_sd: Optional[float] = None, z_supersample: Optional[int] = None,
                 organ_contact: float = 0.5, bowel_contact: float = 0.0, hypervascular: float = 0.0) -> Phantom:
    """Generate one phantom; the same arguments give the same bytes.

    ``shape`` is the array shape ``(k, j, i)`` = (slices, rows, columns) and
    ``spacing`` is ``(x, y, z)`` mm; either may be None (randomised: 0.6-0.9 mm
    in-plane with 512x512 pixels, 0.5-5 mm slices covering 200-400 mm, at
    most 400 slices). The grid has identity direction and array axis 0 runs
    inferior to superior. ``kits_label`` (a KiTS label map Volume) instead
    supplies the grid, kidneys and lesions: the label returned is that
    array, unchanged, and the body is built around its kidneys.

    ``n_tumors`` (default random 0-3) and ``n_cysts`` (default random 0-2)
    count lesions; ``kidneys`` is "both", "left", "right" or "none" (default
    random, mostly both). Labels: 0 background, 1 kidney, 2 tumour; cysts are
    0, or 3 with ``cyst_label``. ``phase`` is "corticomedullary", "portal",
    "nephrographic" or a number in [0, 1]; ``noise_sd`` in HU;
    ``z_supersample`` (odd) paints that many sub-slices per slice for slice
    partial volume (default 1 up to 2.5 mm slices, else 3). ``organ_contact``
    is the probability, per kidney, that no perirenal fat plane separates it
    from the liver or spleen (they touch, as often in real CT; 0 gives the
    fat plane every time, as phantoms before this option had). ``bowel_contact``
    is the probability, per side, that small-bowel loops with an enhancing
    wall reach the kidney's front and side (jejunum beside the left kidney, as
    in the real CT where the first models called such loops tumor); 0, the
    default, paints the bowel exactly as phantoms before this option did.
    ``hypervascular`` is the probability, per tumour, that it enhances as
    clear-cell RCC often does in the arterial phase (the commonest subtype in
    KiTS): a heterogeneous mean of 100 HU up to just below the cortex
    (cortex - 70 to cortex - 5 HU) instead of 40-120 HU and at least 30 HU
    below the cortex; 0, the default, paints every tumour as before.
    """
    t_start = time.perf_counter()
    seed = _check_seed(seed)
    if kidneys not in (None, "both", "left", "right", "none"):
        raise InputError(f'kidneys must be "both", "left", "right", "none" or None, got {kidneys!r}')
    lo_d, hi_d = (float(v) for v in tumor_diameter_mm)
    if not 0 < lo_d <= hi_d:
        raise InputError(f"tumor_diameter_mm must be (min, max) with 0 < min <= max, got {tumor_diameter_mm!r}")
    for name, v, top in (("n_tumors", n_tumors, T.N_TUMOR_SLOTS), ("n_cysts", n_cysts, T.N_CYST_CODES)):
        if v is not None and not (isinstance(v, (int, np.integer)) and 0 <= v <= top):
            raise InputError(f"{name} must be an integer from 0 to {top}, got {v!r}")
    r_geo, r_anat, r_int, r_field, r_les = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5))

    if not 0.0 <= float(organ_contact) <= 1.0:
        raise InputError(f"organ_contact must be a probability in [0, 1], got {organ_contact!r}")
    if not 0.0 <= float(bowel_contact) <= 1.0:
        raise InputError(f"bowel_contact must be a probability in [0, 1], got {bowel_contact!r}")
    if not 0.0 <= float(hypervascular) <= 1.0:
        raise InputError(f"hypervascular must be a probability in [0, 1], got {hypervascular!r}")
    A = sample_anatomy(r_anat)
    for side in ("left", "right"):
        A[f"{side}_contact"] = float(A[f"{side}_contact_u"] < float(organ_contact))
    I = sample_intensities(r_int, randomize_intensity, phase, noise_sd)
    if bowel_contact > 0:
        # its own generator, so that every other draw (and bowel_contact=0) stays as before the option
        r_bowel = np.random.default_rng([seed, 0xB0E1])
        u, reach, wall = r_bowel.random(2), r_bowel.uniform(20.0, 45.0, 2), r_bowel.uniform(15.0, 60.0)
        thin = r_bowel.uniform(1.0, 4.0, 2)
        for n, side in enumerate(("left", "right")):
            A[f"{side}_bowel_reach"] = float(reach[n]) if u[n] < float(bowel_contact) else 0.0
            if A[f"{side}_bowel_reach"]:  # a thin perirenal fat plane (a lean patient) lets the loops come close
                A[f"{side}_fat"] = min(A[f"{side}_fat"], float(thin[n]))
        if max(A["left_bowel_reach"], A["right_bowel_reach"]) > 0:
            I["mean"][T.BOWEL_WALL] += float(wall)  # enhancing mucosa (portal phase jejunum: about 100-150 HU)
    lesion_hu = [sample_lesion_intensity(r_int, "tumor", I["mean"][T.CORTEX], randomize_intensity)
                 for _ in range(T.N_TUMOR_SLOTS)]
    cyst_hu = [sample_lesion_intensity(r_int, "cyst", 0.0, randomize_intensity) for _ in range(T.N_CYST_CODES)]
    if hypervascular > 0:
        # its own generator, as bowel_contact's: hypervascular=0 leaves every draw as before the option
        r_hyper = np.random.default_rng([seed, 0x4E7A])
        for h, u, new in zip(lesion_hu, r_hyper.random(T.N_TUMOR_SLOTS), sample_hypervascular(
                r_hyper, I["mean"][T.CORTEX], T.N_TUMOR_SLOTS)):
            if u < float(hypervascular):
                h.update(new)
    draw_sides = str(r_les.choice(["both", "left", "right"], p=[0.92, 0.04, 0.04]))
    draw_nt = int(r_les.choice(4, p=[0.15, 0.6, 0.17, 0.08]))
    draw_nc = int(r_les.choice(3, p=[0.5, 0.3, 0.2]))

    if kits_label is not None:
        if shape is not None or spacing is not None:
            raise InputError("shape and spacing come from kits_label; leave them None")
        reo = canonical_reorient(kits_label)
        canon = reo.volume(kits_label)
        shape_c = canon.shape
        sp = canon.spacing
        origin = canon.origin
        label_c = np.asarray(canon.array)
    else:
        reo = None
        shape_c, sp = scan_geometry(r_geo, shape, spacing)
        origin = None
        label_c = None
    nz, ny, nx = shape_c
    sub = _check_sub(z_supersample, sp[2])

    if kits_label is None:
        sides = [s for s in ("right", "left") if (kidneys or draw_sides) in ("both", s)]
        origin = place_synthetic(A, r_geo, shape_c, sp)
        comps = []
    else:
        grid0 = Grid(*axes(origin, sp, shape_c))
        comps = find_kidneys(label_c, grid0)
        sides = place_from_label(A, r_geo, comps, grid0)
    if len(sides) == 1:  # a solitary kidney grows
        for k in ("L", "W", "T"):
            A[f"{sides[0]}_{k}"] *= 1.12
    x, y, z = axes(origin, sp, shape_c)
    zp = (z[:, None] + ((np.arange(sub) - (sub - 1) / 2) * sp[2] / sub)[None, :]).ravel()
    grid = Grid(x, y, zp)

    tissue = np.zeros(grid.shape, np.uint8)
    paint_slices(tissue, grid, A)
    paint_organs(tissue, grid, A, r_field)
    t_paint = time.perf_counter()
    kid_info: Dict[str, Any] = {}
    if kits_label is None:
        nt = draw_nt if n_tumors is None else int(n_tumors)
        nc = draw_nc if n_cysts is None else int(n_cysts)
        if not sides:
            if (n_tumors or 0) > 0 or (n_cysts or 0) > 0:
                raise InputError("a phantom without kidneys cannot have tumors or cysts")
            nt = nc = 0
        Ks = {s: kidney_frame(A, s) for s in sides}
        for s in sides:
            paint_kidney(tissue, grid, A, Ks[s], r_field)
            kid_info[s] = kidney_info(Ks[s])
        lesions = place_lesions(r_les, Ks, nt, nc, (lo_d, hi_d))
        paint_lesions(tissue, grid, lesions, r_field)
        tumors = [les for les in lesions if les["kind"] == "tumor"]
        cysts = [les for les in lesions if les["kind"] == "cyst"]
    else:
        if n_tumors is not None or n_cysts is not None or kidneys is not None:
            raise InputError("n_tumors, n_cysts and kidneys come from kits_label; leave them None")
        label_p = np.repeat(label_c, sub, axis=0) if sub > 1 else label_c
        comps_p = find_kidneys(label_p, grid)
        tumors, _, n_cy = paint_label_kidneys(tissue, grid, label_p, comps_p, (sp[2] / sub, sp[1], sp[0]),
                                              r_field, 0.5 * (A["left_cortex"] + A["right_cortex"]),
                                              contact=[sd for sd in ("left", "right") if A[f"{sd}_contact"]],
                                              midline_x=A["cx"])
        for les in tumors:
            les["side"] = "left" if les["centre_xyz"][0] > A["cx"] else "right"
        for c in comps:
            side = "left" if c["centre_xyz"][0] > A["cx"] else "right"
            kid_info.setdefault(side, {"side": side, "centre_xyz": [float(v) for v in c["centre_xyz"]],
                                       "extent_mm": [float(v) for v in c["extent_mm"]]})
        cysts = [{"kind": "cyst"} for _ in range(n_cy)]

    mean = dict(I["mean"])
    tex = dict(I["texture"])
    for t_i, h in enumerate(lesion_hu):
        for q in range(T.TUMOR_LEVELS):
            mean[tumor_code(t_i, q)] = h["hu"] + h["heterogeneity"] * (q - 2.5) / 2.5
            tex[tumor_code(t_i, q)] = 6.0
        mean[tumor_code(t_i, T.TUMOR_LEVELS)] = h["necrosis_hu"]
        tex[tumor_code(t_i, T.TUMOR_LEVELS)] = 4.0
    for c_i, h in enumerate(cyst_hu):
        mean[cyst_code(c_i)] = h["hu"]
        tex[cyst_code(c_i)] = 1.0
    texture = make_lattice(r_field, (grid.x[0], grid.y[0], grid.z[0]), (grid.x[-1], grid.y[-1], grid.z[-1]), 5.0,
                           coarse_mix=(20.0, 0.8))
    img = render(tissue, grid, sub, sp, lut(mean, -1000.0), lut(tex), texture, I, seed)
    tissue_out = np.ascontiguousarray(tissue[sub // 2::sub]) if sub > 1 else tissue
    del tissue
    t_render = time.perf_counter()

    if kits_label is None:
        label_lut = lut({c: 1 for c in KIDNEY_CODES}, 0, np.uint8)
        label_lut[T.TUMOR0:] = 2
        label_lut[T.CYST0:T.CYST0 + T.N_CYST_CODES] = 3 if cyst_label else 0
        label_arr = np.take(label_lut, tissue_out)
        geo = dict(spacing=sp, origin=origin)
        measure(tissue_out, grid, sub, sp, tumors, cysts)
    else:
        img = reo.invert(img)
        tissue_out = reo.invert(tissue_out)
        label_arr = np.array(kits_label.array, dtype=np.uint8, copy=True)
        geo = dict(spacing=kits_label.spacing, origin=kits_label.origin, direction=kits_label.direction)
    for t_i, les in enumerate(tumors):
        les.update({k: float(v) for k, v in lesion_hu[t_i].items()})
    for c_i, les in enumerate(cysts):
        les["hu"] = float(cyst_hu[c_i % T.N_CYST_CODES]["hu"])

    info = {
        "generator": "KidneyTumorSegLib.phantom/1",
        "seed": seed,
        "shape": [int(s) for s in img.shape],
        "spacing": [float(s) for s in geo["spacing"]],
        "origin": [float(s) for s in geo["origin"]],
        "direction": [float(s) for s in geo.get("direction", np.eye(3).ravel())],
        "z_supersample": sub,
        "from_kits_label": kits_label is not None,
        "kidneys": kid_info,
        "tumors": [_jsonable(les) for les in tumors],
        "cysts": [_jsonable(les) for les in cysts],
        "cyst_label": bool(cyst_label),
        "randomize_intensity": bool(randomize_intensity),
        "organ_contact": float(organ_contact),
        "bowel_contact": float(bowel_contact),
        "hypervascular": float(hypervascular),
        "anatomy": _jsonable(A),
        "intensity": _jsonable({**I, "mean": {NAMES.get(k, str(k)): v for k, v in I["mean"].items()},
                                "texture": {NAMES.get(k, str(k)): v for k, v in I["texture"].items()}}),
        "tissue_codes": {v: k for k, v in NAMES.items()},
        "timing_s": {"paint": round(t_paint - t_start, 3), "total": round(time.perf_counter() - t_start, 3),
                     "render": round(t_render - t_paint, 3)},
    }
    meta = {"phantom_seed": seed}
    image = Volume(img, meta=dict(meta), **geo)
    label = Volume(label_arr, meta=dict(meta), **geo)
    log.debug("phantom seed %d shape %s in %.2f s", seed, img.shape, info["timing_s"]["total"])
    return Phantom(image=image, label=label, info=info, tissue=tissue_out)


# --------------------------------------------------------------------------
def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_sub(z_supersample, sz: float) -> int:
    if z_supersample is None:
        return 1 if sz <= 2.5 else 3
    if not isinstance(z_supersample, (int, np.integer)) or z_supersample < 1 or z_supersample % 2 == 0:
        raise InputError(f"z_supersample must be a positive odd integer, got {z_supersample!r}")
    return int(z_supersample)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj
