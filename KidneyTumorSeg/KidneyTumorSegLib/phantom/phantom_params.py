"""Tissue codes and the random parameters of the abdominal CT phantom.

The phantom is painted as a ``uint8`` map of tissue codes (this module's
``T``) and turned into HU by look-up tables, so every tissue's intensity is
one number per case (plus a texture amplitude). Lesions get codes of their
own: cysts ``CYST0 + c`` and tumours ``TUMOR0 + TUMOR_STRIDE * t + q``, where
``q < TUMOR_LEVELS`` are enhancement levels (heterogeneity baked into codes)
and ``q == TUMOR_LEVELS`` is the necrotic core.

All lengths are millimetres; angles degrees; intensities Hounsfield units.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np


class T:
    """Tissue codes of the painted map (``uint8``)."""

    AIR = 0
    TABLE = 1
    TABLE_FOAM = 2
    SKIN = 3
    SUBFAT = 4
    MUSCLE = 5
    VFAT = 6
    CORTICAL = 7
    CANCELLOUS = 8
    DISC = 9
    CSF = 10
    CORD = 11
    LUNG = 12
    LIVER = 13
    HEPVESSEL = 14
    SPLEEN = 15
    AORTA = 16
    IVC = 17
    STOMACH_WALL = 18
    BOWEL_WALL = 19
    BOWEL_FLUID = 20
    GAS = 21
    STOOL = 22
    PANCREAS = 23
    GALLBLADDER = 24
    BLADDER = 25
    BLOOD = 26
    MYOCARDIUM = 27
    CARTILAGE = 28
    PERIRENAL = 29
    CORTEX = 30
    MEDULLA = 31
    SINUS_FAT = 32
    PELVIS_URINE = 33
    RENAL_VEIN = 34
    RENAL_ARTERY = 35
    URETER = 36
    CYST0 = 40  # 40..49, one per cyst (wrapping)
    N_CYST_CODES = 10
    TUMOR0 = 50  # 50.., TUMOR_STRIDE codes per tumour
    TUMOR_STRIDE = 8
    TUMOR_LEVELS = 6
    N_TUMOR_SLOTS = 25  # 50 + 8 * 25 = 250 <= 255


NAMES: Dict[int, str] = {v: k.lower() for k, v in vars(T).items() if k.isupper() and not k.startswith(("N_", "TUMOR_")) and k not in ("CYST0", "TUMOR0")}

# kidney (label 1) is the whole organ envelope: parenchyma plus the sinus contents inside it,
# as in KiTS reference labels, which are solid apart from the hilum opening
KIDNEY_CODES = (T.CORTEX, T.MEDULLA, T.SINUS_FAT, T.PELVIS_URINE)
# soft organs a kidney, its fat capsule or a lesion may displace (never bone, muscle, big vessels, skin)
SOFT_CODES = (T.VFAT, T.LIVER, T.HEPVESSEL, T.SPLEEN, T.STOMACH_WALL, T.BOWEL_WALL, T.BOWEL_FLUID, T.GAS,
              T.STOOL, T.PANCREAS, T.GALLBLADDER, T.PERIRENAL, T.BLADDER)


def tumor_code(t: int, q: int) -> int:
    return T.TUMOR0 + T.TUMOR_STRIDE * (t % T.N_TUMOR_SLOTS) + q


def cyst_code(c: int) -> int:
    return T.CYST0 + (c % T.N_CYST_CODES)


def lut(values: Dict[int, float], default: float = 0.0, dtype=np.float32) -> np.ndarray:
    out = np.full(256, default, dtype=dtype)
    for k, v in values.items():
        out[int(k)] = v
    return out


def label_lut(cyst_label: bool) -> np.ndarray:
    """KiTS label per tissue code (uint8): kidney 1, tumour 2, cyst 3 with ``cyst_label`` (else 0), the rest 0."""
    out = lut({c: 1 for c in KIDNEY_CODES}, 0, np.uint8)
    out[T.TUMOR0:] = 2
    out[T.CYST0:T.CYST0 + T.N_CYST_CODES] = 3 if cyst_label else 0
    return out


def allowed(*codes: int) -> np.ndarray:
    """Boolean look-up table: which existing codes a new structure may paint over."""
    out = np.zeros(256, dtype=bool)
    out[list(codes)] = True
    return out


def allowed_soft() -> np.ndarray:
    return allowed(*SOFT_CODES)


def allowed_lesion() -> np.ndarray:
    a = allowed(*SOFT_CODES, *KIDNEY_CODES, T.RENAL_VEIN, T.RENAL_ARTERY, T.URETER)
    a[T.CYST0:T.CYST0 + T.N_CYST_CODES] = True
    return a


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


# --------------------------------------------------------------------------
# Intensities
# --------------------------------------------------------------------------
PHASES = {"corticomedullary": 0.1, "portal": 0.5, "nephrographic": 0.9}


def sample_intensities(rng: np.random.Generator, randomize: bool, phase: Optional[object] = None,
                       noise_sd: Optional[float] = None) -> Dict[str, object]:
    """Mean HU per tissue, texture amplitudes, noise and blur for one case.

    ``phase`` is a name of ``PHASES`` or a float in [0, 1] (0 late arterial /
    corticomedullary, 1 nephrographic); None draws one. ``randomize`` widens
    every range (domain randomisation).
    """
    if phase is None:
        t = _u(rng, 0.0, 1.0) if randomize else _u(rng, 0.1, 0.8)
    else:
        t = float(PHASES.get(phase, phase)) if isinstance(phase, str) else float(phase)
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"phase must be one of {sorted(PHASES)} or a number in [0, 1], got {phase!r}")

    def lerp(a: float, b: float) -> float:
        return a + (b - a) * t

    mean = {
        T.AIR: -1000.0, T.TABLE: _u(rng, 150, 400), T.TABLE_FOAM: _u(rng, -980, -900), T.SKIN: _u(rng, 20, 45),
        T.SUBFAT: _u(rng, -110, -90), T.MUSCLE: _u(rng, 50, 70), T.VFAT: _u(rng, -105, -85),
        T.CORTICAL: _u(rng, 750, 1000), T.CANCELLOUS: _u(rng, 200, 300), T.DISC: _u(rng, 70, 100),
        T.CSF: _u(rng, 5, 20), T.CORD: _u(rng, 25, 40), T.LUNG: _u(rng, -860, -790),
        T.LIVER: 75.0 + 42.0 * np.sqrt(t) + _u(rng, -8, 8), T.HEPVESSEL: lerp(135, 165) + _u(rng, -10, 10),
        T.SPLEEN: lerp(128, 112) + _u(rng, -8, 8), T.AORTA: lerp(280, 145) + _u(rng, -30, 30),
        T.IVC: lerp(105, 135) + _u(rng, -15, 15), T.STOMACH_WALL: lerp(100, 85) + _u(rng, -10, 10),
        T.BOWEL_WALL: lerp(100, 85) + _u(rng, -10, 10), T.BOWEL_FLUID: _u(rng, 5, 30), T.GAS: -1000.0,
        T.STOOL: _u(rng, -80, 10), T.PANCREAS: lerp(110, 95) + _u(rng, -10, 10), T.GALLBLADDER: _u(rng, 0, 20),
        T.BLADDER: _u(rng, 0, 15), T.BLOOD: lerp(250, 140) + _u(rng, -25, 25), T.MYOCARDIUM: _u(rng, 90, 120),
        T.CARTILAGE: _u(rng, 100, 160), T.PERIRENAL: _u(rng, -100, -80),
        T.CORTEX: lerp(225, 160) + _u(rng, -15, 15), T.SINUS_FAT: _u(rng, -85, -60), T.PELVIS_URINE: _u(rng, 0, 20),
        T.URETER: _u(rng, 0, 25),
    }
    mean[T.MEDULLA] = min(lerp(75, 150) + _u(rng, -15, 15), mean[T.CORTEX] - 5.0)
    mean[T.RENAL_VEIN] = lerp(170, 140) + _u(rng, -15, 15)
    mean[T.RENAL_ARTERY] = mean[T.AORTA]
    if randomize:
        for k in list(mean):
            if k not in (T.AIR, T.GAS):
                mean[k] += float(rng.normal(0.0, 6.0 + 0.05 * abs(mean[k])))
        mean[T.MEDULLA] = min(mean[T.MEDULLA], mean[T.CORTEX] - 5.0)
    tex = {T.SUBFAT: 5, T.VFAT: 10, T.PERIRENAL: 8, T.SINUS_FAT: 10, T.LIVER: 5, T.SPLEEN: 4, T.MUSCLE: 5,
           T.CANCELLOUS: 40, T.CORTICAL: 70, T.STOOL: 110, T.BOWEL_FLUID: 5, T.BOWEL_WALL: 8, T.LUNG: 35,
           T.CORTEX: 7, T.MEDULLA: 9, T.PANCREAS: 10, T.BLOOD: 6, T.TABLE_FOAM: 10, T.STOMACH_WALL: 8}
    tex_scale = _u(rng, 0.5, 2.0) if randomize else _u(rng, 0.8, 1.2)
    sd = float(noise_sd) if noise_sd is not None else (_u(rng, 5, 30) if randomize else _u(rng, 8, 16))
    return {
        "phase": t,
        "mean": {int(k): float(v) for k, v in mean.items()},
        "texture": {int(k): float(v) * tex_scale for k, v in tex.items()},
        "texture_scale": tex_scale,
        # noise power spectrum NPS(f) ~ f exp(-(f/f0)^2): f0 = 0.2 c/mm gives the measured lag-1 correlation
        "noise_sd": sd,
        "nps_f0": _u(rng, 0.12, 0.35) if randomize else _u(rng, 0.17, 0.25),
        "noise_zcorr": _u(rng, 0.0, 0.4) if randomize else _u(rng, 0.1, 0.3),
        "psf_sigma_mm": _u(rng, 0.3, 1.0) if randomize else _u(rng, 0.35, 0.6),
        "clip_low": -1024.0 if rng.random() < 0.7 else -1000.0,
    }


def sample_lesion_intensity(rng: np.random.Generator, kind: str, cortex_hu: float, randomize: bool) -> Dict[str, float]:
    """HU of one lesion: tumour mean / heterogeneity / necrosis, or a cyst's fluid value."""
    if kind == "cyst":
        return {"hu": _u(rng, 0, 20) + (float(rng.normal(0, 4)) if randomize else 0.0)}
    hi = min(120.0, cortex_hu - 30.0)
    m = _u(rng, 40.0, max(hi, 45.0))
    return {"hu": m, "heterogeneity": _u(rng, 10, 30), "necrosis_hu": _u(rng, 10, 30)}


def sample_hypervascular(rng: np.random.Generator, cortex_hu: float, n: int) -> List[Dict[str, float]]:
    """``n`` tumour intensities of hypervascular (clear-cell-like) RCC in the arterial phase.

    Mean from cortex - 70 HU (at least 100) to cortex - 5, its texture levels
    spread 25-45 HU either side of it (10-30 for other tumours) and a necrotic
    or cystic core of 15-40 HU, as in the corticomedullary phase, where
    clear-cell RCC enhances heterogeneously and its brightest parts as much as
    the cortex.
    """
    lo = max(100.0, cortex_hu - 70.0)
    hi = max(lo + 5.0, cortex_hu - 5.0)
    return [{"hu": _u(rng, lo, hi), "heterogeneity": _u(rng, 25, 45), "necrosis_hu": _u(rng, 15, 40)}
            for _ in range(n)]


def intensity_luts(I: Dict[str, object], lesion_hu: List[Dict[str, float]], cyst_hu: List[Dict[str, float]]
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """Mean HU and texture amplitude per tissue code, lesion codes included, for ``phantom_render.render``.

    ``I`` is :func:`sample_intensities`'s; ``lesion_hu`` one
    :func:`sample_lesion_intensity` per tumour slot, ``cyst_hu`` one per cyst code.
    """
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
    return lut(mean, -1000.0), lut(tex)


# --------------------------------------------------------------------------
# Anatomy (patient frame: mm relative to the body centre and the L1/L2 level)
# --------------------------------------------------------------------------
def sample_anatomy(rng: np.random.Generator) -> Dict[str, float]:
    """Body habitus and organ sizes/positions as plain numbers (mm, degrees)."""
    # subcutaneous fat adds to a lean body: a thin wall of fat does not make a small patient
    fat = float(np.exp(rng.uniform(np.log(6), np.log(45))))
    a0 = _u(rng, 125, 160)
    A = {
        "a": a0 + 0.8 * fat, "b": a0 * _u(rng, 0.62, 0.78) + 0.8 * fat, "b_ant": _u(rng, 0.95, 1.08), "b_post": _u(rng, 0.86, 0.98),
        "square": _u(rng, 0.0, 0.06), "flat_back": _u(rng, 0.0, 0.08), "asym_c": _u(rng, -0.02, 0.02),
        "asym_s": _u(rng, -0.02, 0.02), "chest": _u(rng, 0.0, 0.08), "hips": _u(rng, 0.0, 0.12),
        "belly": _u(rng, 0.0, 0.12), "wiggle": _u(rng, 0.0, 0.02), "wiggle_phase": _u(rng, 0, 6.28),
        "skin": _u(rng, 1.5, 3.0), "fat": fat, "fat_c2": _u(rng, -0.3, 0.3), "fat_s1": _u(rng, -0.3, 0.3),
        "wall": _u(rng, 9, 16), "d_back": _u(rng, 58, 75),
        "vb_rx": _u(rng, 19, 25), "vb_ry_f": _u(rng, 0.68, 0.8), "level": _u(rng, 30, 36), "disc": _u(rng, 7, 10),
        "canal": _u(rng, 7, 9), "lordosis": _u(rng, 0, 15),
        "aorta_r": _u(rng, 9, 13), "aorta_x": _u(rng, 8, 20), "ivc_x": _u(rng, 20, 30), "ivc_rx": _u(rng, 10, 15),
        "ivc_ry": _u(rng, 6, 10), "z_bif": _u(rng, 70, 100),
        "dome_r": _u(rng, 120, 160), "dome_l_drop": _u(rng, 5, 25), "recess": _u(rng, 70, 100),
        "rib_dz": _u(rng, 26, 32), "rib_drop": _u(rng, 90, 140), "rib_h": _u(rng, 4.5, 6.0),
        "crest": _u(rng, 110, 140), "psoas_r": _u(rng, 14, 20),
        "liver": _u(rng, 0.85, 1.15), "spleen": _u(rng, 0.7, 1.3), "stomach": _u(rng, 0.5, 1.2),
        "stomach_air": _u(rng, 0.0, 0.5), "gallbladder": float(rng.random() < 0.7), "bowel_t": _u(rng, -0.7, 0.1),
        "bowel_gas": _u(rng, 0.6, 1.6), "colon_r": _u(rng, 16, 26), "bladder": _u(rng, 0.3, 1.2),
        "table": float(rng.random() < 0.6), "table_gap": _u(rng, 2, 30),
    }
    for side in ("left", "right"):
        A.update({
            f"{side}_L": _u(rng, 50, 62), f"{side}_W": _u(rng, 25, 32), f"{side}_T": _u(rng, 18, 25),
            f"{side}_x": _u(rng, 55, 78), f"{side}_y": _u(rng, -10, 8), f"{side}_alpha": _u(rng, 8, 25),
            f"{side}_beta": _u(rng, 5, 25), f"{side}_psi": _u(rng, 20, 45), f"{side}_cortex": _u(rng, 4, 8),
            f"{side}_bend": _u(rng, 0.1, 0.3), f"{side}_sinus": _u(rng, 0.35, 0.5), f"{side}_fat": _u(rng, 2, 15),
        })
    A["right_z"] = -_u(rng, 5, 25)
    A["left_z"] = A["right_z"] + _u(rng, 5, 25)
    # drawn last so that the draws above do not depend on them: uniform numbers that
    # ``make_phantom(organ_contact=p)`` compares with p (liver/spleen touch the kidney when u < p)
    for side in ("left", "right"):
        A[f"{side}_contact_u"] = float(rng.random())
    A["spleen_drop_contact"] = _u(rng, 20, 45)  # how far the spleen sits lower when it touches the left kidney
    return A
