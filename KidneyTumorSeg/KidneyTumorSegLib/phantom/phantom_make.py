"""One phantom from a seed: :func:`make_phantom` runs the generator's steps in order.

Argument checks, the random parameters (``phantom_draw``), the grid and
patient placement (``phantom_place``), the body and organs
(``phantom_body``, ``phantom_organs``), the kidneys and lesions, synthetic
(``phantom_kidney``) or from a reference label (``phantom_kits``), the CT
image (``phantom_render``), the label and the description
(``phantom_info``). See :mod:`.phantom` for what a phantom holds and how it
compares with real CT.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .phantom_body import paint_slices
from .phantom_draw import Draws, draw_parameters
from .phantom_field import make_lattice
from .phantom_info import phantom_info, record_lesion_intensities
from .phantom_kidney import paint_kidneys
from .phantom_kits import paint_kits_kidneys
from .phantom_organs import paint_organs
from .phantom_params import T, intensity_luts, label_lut
from .phantom_place import Scan, measure, set_up_scan
from .phantom_render import render
from ..geometry.volume import InputError, Volume

# the public module's logger, as when make_phantom lived in phantom.py
log = logging.getLogger(__package__ + ".phantom")


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
    seed, diameter = _check_args(seed, kidneys, tumor_diameter_mm, n_tumors, n_cysts, organ_contact, bowel_contact,
                                 hypervascular)
    r_geo, r_anat, r_int, r_field, r_les = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5))
    draws = draw_parameters(seed, r_anat, r_int, r_les, randomize_intensity, phase, noise_sd, organ_contact,
                            bowel_contact, hypervascular)
    scan = set_up_scan(draws.A, r_geo, shape, spacing, z_supersample, kits_label, kidneys or draws.sides)
    tissue = _paint_body(scan, draws.A, r_field)
    t_paint = time.perf_counter()
    kid_info, tumors, cysts = _paint_kidneys(tissue, scan, draws, kits_label, n_tumors, n_cysts, kidneys, diameter,
                                             r_field, r_les)
    img, tissue_out = _render(tissue, scan, draws, r_field, seed)
    del tissue  # the painted map with its sub-slices is the largest array: free it before the label
    t_render = time.perf_counter()
    img, label_arr, tissue_out, geo = _output_grid(img, tissue_out, scan, kits_label, cyst_label, tumors, cysts)
    record_lesion_intensities(tumors, cysts, draws)
    info = phantom_info(seed, img.shape, geo, scan.sub, kits_label is not None, kid_info, tumors, cysts, draws,
                        cyst_label=cyst_label, randomize_intensity=randomize_intensity, organ_contact=organ_contact,
                        bowel_contact=bowel_contact, hypervascular=hypervascular, times=(t_start, t_paint, t_render))
    return _phantom(img, label_arr, tissue_out, geo, info, seed)


# --------------------------------------------------------------------------
def _check_args(seed, kidneys, tumor_diameter_mm, n_tumors, n_cysts, organ_contact, bowel_contact,
                hypervascular) -> Tuple[int, Tuple[float, float]]:
    """The seed as an int and the tumour diameter range (min, max) mm; InputError on a bad argument."""
    seed = _check_seed(seed)
    if kidneys not in (None, "both", "left", "right", "none"):
        raise InputError(f'kidneys must be "both", "left", "right", "none" or None, got {kidneys!r}')
    lo_d, hi_d = (float(v) for v in tumor_diameter_mm)
    if not 0 < lo_d <= hi_d:
        raise InputError(f"tumor_diameter_mm must be (min, max) with 0 < min <= max, got {tumor_diameter_mm!r}")
    for name, v, top in (("n_tumors", n_tumors, T.N_TUMOR_SLOTS), ("n_cysts", n_cysts, T.N_CYST_CODES)):
        if v is not None and not (isinstance(v, (int, np.integer)) and 0 <= v <= top):
            raise InputError(f"{name} must be an integer from 0 to {top}, got {v!r}")
    for name, p in (("organ_contact", organ_contact), ("bowel_contact", bowel_contact),
                    ("hypervascular", hypervascular)):
        if not 0.0 <= float(p) <= 1.0:
            raise InputError(f"{name} must be a probability in [0, 1], got {p!r}")
    return seed, (lo_d, hi_d)


def _check_seed(seed) -> int:
    """``seed`` as an int; InputError unless it is a non-negative integer (bool is not one)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _lesion_counts(sides: List[str], n_tumors: Optional[int], n_cysts: Optional[int], draws: Draws) -> Tuple[int, int]:
    """Tumours and cysts to place: the caller's counts, else the drawn ones; none without kidneys."""
    nt = draws.n_tumors if n_tumors is None else int(n_tumors)
    nc = draws.n_cysts if n_cysts is None else int(n_cysts)
    if not sides:
        if (n_tumors or 0) > 0 or (n_cysts or 0) > 0:
            raise InputError("a phantom without kidneys cannot have tumors or cysts")
        nt = nc = 0
    return nt, nc


def _paint_body(scan: Scan, A: Dict[str, float], r_field: np.random.Generator) -> np.ndarray:
    """The painted tissue map: body wall, skeleton, muscles, vessels (slice by slice), then the organs."""
    tissue = np.zeros(scan.grid.shape, np.uint8)
    paint_slices(tissue, scan.grid, A)
    paint_organs(tissue, scan.grid, A, r_field)
    return tissue


def _paint_kidneys(tissue: np.ndarray, scan: Scan, draws: Draws, kits_label: Optional[Volume], n_tumors: Optional[int],
                   n_cysts: Optional[int], kidneys: Optional[str], diameter: Tuple[float, float],
                   r_field: np.random.Generator, r_les: np.random.Generator):
    """Kidneys and lesions, synthetic or from ``kits_label``: (kidney descriptions by side, tumours, cysts)."""
    if kits_label is None:
        nt, nc = _lesion_counts(scan.sides, n_tumors, n_cysts, draws)
        return paint_kidneys(tissue, scan.grid, draws.A, scan.sides, nt, nc, diameter, r_field, r_les)
    if n_tumors is not None or n_cysts is not None or kidneys is not None:
        raise InputError("n_tumors, n_cysts and kidneys come from kits_label; leave them None")
    return paint_kits_kidneys(tissue, scan.grid, scan.label, scan.comps, scan.sub, scan.spacing, draws.A, r_field)


def _render(tissue: np.ndarray, scan: Scan, draws: Draws, r_field: np.random.Generator, seed: int):
    """The CT image from the painted map, and the map on the output slices (the middle sub-slice of each)."""
    grid, sub = scan.grid, scan.sub
    lut_mean, lut_tex = intensity_luts(draws.I, draws.lesion_hu, draws.cyst_hu)
    texture = make_lattice(r_field, (grid.x[0], grid.y[0], grid.z[0]), (grid.x[-1], grid.y[-1], grid.z[-1]), 5.0,
                           coarse_mix=(20.0, 0.8))
    img = render(tissue, grid, sub, scan.spacing, lut_mean, lut_tex, texture, draws.I, seed)
    tissue_out = np.ascontiguousarray(tissue[sub // 2::sub]) if sub > 1 else tissue
    return img, tissue_out


def _output_grid(img: np.ndarray, tissue_out: np.ndarray, scan: Scan, kits_label: Optional[Volume], cyst_label: bool,
                 tumors: List[Dict[str, Any]], cysts: List[Dict[str, Any]]):
    """Image, label and tissue map on the output grid, and its geometry (``Volume`` keywords).

    Synthetic: the label from the tissue codes, and the lesions' realised
    sizes measured. From a reference label: everything back in its array
    order, and its label unchanged.
    """
    if kits_label is None:
        label_arr = np.take(label_lut(cyst_label), tissue_out)
        geo = dict(spacing=scan.spacing, origin=scan.origin)
        measure(tissue_out, scan.grid, scan.sub, scan.spacing, tumors, cysts)
    else:
        img = scan.reorient.invert(img)
        tissue_out = scan.reorient.invert(tissue_out)
        label_arr = np.array(kits_label.array, dtype=np.uint8, copy=True)
        geo = dict(spacing=kits_label.spacing, origin=kits_label.origin, direction=kits_label.direction)
    return img, label_arr, tissue_out, geo


def _phantom(img: np.ndarray, label_arr: np.ndarray, tissue_out: np.ndarray, geo: Dict[str, Any],
             info: Dict[str, Any], seed: int) -> Phantom:
    """The result: image and label volumes on the output grid, tagged with the seed."""
    meta = {"phantom_seed": seed}
    image = Volume(img, meta=dict(meta), **geo)
    label = Volume(label_arr, meta=dict(meta), **geo)
    log.debug("phantom seed %d shape %s in %.2f s", seed, img.shape, info["timing_s"]["total"])
    return Phantom(image=image, label=label, info=info, tissue=tissue_out)
