"""The random parameters of one phantom, drawn in a fixed order.

``make_phantom`` spawns five generators from its seed (geometry, anatomy,
intensity, field, lesions); this module makes the anatomy, intensity and
lesion-count draws. Each generator's draws must stay in the same order for
the same seed to give the same bytes. The opt-in options (``bowel_contact``,
``hypervascular``) draw from generators of their own, seeded from the case
seed, so that leaving them 0 keeps every other draw, and so every phantom
made before the option, unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from .phantom_params import T, sample_anatomy, sample_hypervascular, sample_intensities, sample_lesion_intensity


@dataclass
class Draws:
    """What :func:`draw_parameters` drew for one case.

    ``A`` anatomy (mm, degrees), ``I`` intensities (see
    :func:`~.phantom_params.sample_intensities`), ``lesion_hu`` one
    intensity dict per tumour slot, ``cyst_hu`` one per cyst code;
    ``sides``, ``n_tumors`` and ``n_cysts`` are the drawn defaults that the
    caller's options may override.
    """

    A: Dict[str, float]
    I: Dict[str, object]
    lesion_hu: List[Dict[str, float]]
    cyst_hu: List[Dict[str, float]]
    sides: str
    n_tumors: int
    n_cysts: int


def draw_parameters(seed: int, r_anat: np.random.Generator, r_int: np.random.Generator, r_les: np.random.Generator,
                    randomize_intensity: bool, phase: Optional[object], noise_sd: Optional[float],
                    organ_contact: float, bowel_contact: float, hypervascular: float) -> Draws:
    """Anatomy, intensities, lesion intensities and the default kidney sides and lesion counts of case ``seed``."""
    A = sample_anatomy(r_anat)
    for side in ("left", "right"):
        A[f"{side}_contact"] = float(A[f"{side}_contact_u"] < float(organ_contact))
    I = sample_intensities(r_int, randomize_intensity, phase, noise_sd)
    if bowel_contact > 0:
        _draw_bowel_contact(seed, A, I, bowel_contact)
    lesion_hu = [sample_lesion_intensity(r_int, "tumor", I["mean"][T.CORTEX], randomize_intensity)
                 for _ in range(T.N_TUMOR_SLOTS)]
    cyst_hu = [sample_lesion_intensity(r_int, "cyst", 0.0, randomize_intensity) for _ in range(T.N_CYST_CODES)]
    if hypervascular > 0:
        _draw_hypervascular(seed, lesion_hu, I["mean"][T.CORTEX], hypervascular)
    draw_sides = str(r_les.choice(["both", "left", "right"], p=[0.92, 0.04, 0.04]))
    draw_nt = int(r_les.choice(4, p=[0.15, 0.6, 0.17, 0.08]))
    draw_nc = int(r_les.choice(3, p=[0.5, 0.3, 0.2]))
    return Draws(A, I, lesion_hu, cyst_hu, draw_sides, draw_nt, draw_nc)


def _draw_bowel_contact(seed: int, A: Dict[str, float], I: Dict[str, object], bowel_contact: float) -> None:
    """Per side, small-bowel loops reaching the kidney (``A[side_bowel_reach]``) and their enhancing wall."""
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


def _draw_hypervascular(seed: int, lesion_hu: List[Dict[str, float]], cortex_hu: float, hypervascular: float) -> None:
    """Replace, with probability ``hypervascular`` each, tumour intensities by hypervascular ones (in place)."""
    # its own generator, as bowel_contact's: hypervascular=0 leaves every draw as before the option
    r_hyper = np.random.default_rng([seed, 0x4E7A])
    for h, u, new in zip(lesion_hu, r_hyper.random(T.N_TUMOR_SLOTS), sample_hypervascular(
            r_hyper, cortex_hu, T.N_TUMOR_SLOTS)):
        if u < float(hypervascular):
            h.update(new)
