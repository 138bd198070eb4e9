"""The description of one phantom: ``Phantom.info``, written as ``phantom_info.json``.

Every parameter a case was made with (seed, grid, options, anatomy,
intensities), what it holds (kidneys, tumours and cysts with their realised
sizes and intensities), the tissue-code names and the time each step took.
All of it is plain JSON values (:func:`~.jsonfile.jsonable`), except that
NaN and infinities stay floats (see :func:`_plain`).
"""
from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ..io.jsonfile import jsonable
from .phantom_draw import Draws
from .phantom_params import NAMES, T


def _plain(x: Any) -> Any:
    """:func:`~.jsonfile.jsonable`, except that NaN and infinities stay floats.

    They come only from degenerate arguments (a NaN or infinite ``noise_sd``,
    an infinite smallest tumour diameter), and the description has always
    recorded them as they were (``NaN``, ``Infinity`` in phantom_info.json)
    where jsonable gives None.
    """
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, (float, np.floating)) and not math.isfinite(x):
        return float(x)
    return jsonable(x)


def record_lesion_intensities(tumors: List[Dict[str, Any]], cysts: List[Dict[str, Any]], draws: Draws) -> None:
    """Add each lesion's drawn intensities to its description (in place)."""
    for t_i, les in enumerate(tumors):
        les.update({k: float(v) for k, v in draws.lesion_hu[t_i].items()})
    for c_i, les in enumerate(cysts):
        les["hu"] = float(draws.cyst_hu[c_i % T.N_CYST_CODES]["hu"])


def phantom_info(seed: int, shape: Sequence[int], geo: Dict[str, Any], sub: int, from_kits_label: bool,
                 kidneys: Dict[str, Any], tumors: List[Dict[str, Any]], cysts: List[Dict[str, Any]], draws: Draws, *,
                 cyst_label: bool, randomize_intensity: bool, organ_contact: float, bowel_contact: float,
                 hypervascular: float, times: Tuple[float, float, float]) -> Dict[str, Any]:
    """The info dict of a case.

    ``geo`` holds the written image's spacing, origin and maybe direction;
    ``times`` are ``time.perf_counter()`` at the start, after the body and
    organs were painted, and after rendering.
    """
    t_start, t_paint, t_render = times
    A, I = draws.A, draws.I
    return {
        "generator": "KidneyTumorSegLib.phantom/1",
        "seed": seed,
        "shape": [int(s) for s in shape],
        "spacing": [float(s) for s in geo["spacing"]],
        "origin": [float(s) for s in geo["origin"]],
        "direction": [float(s) for s in geo.get("direction", np.eye(3).ravel())],
        "z_supersample": sub,
        "from_kits_label": from_kits_label,
        "kidneys": kidneys,
        "tumors": [_plain(les) for les in tumors],
        "cysts": [_plain(les) for les in cysts],
        "cyst_label": bool(cyst_label),
        "randomize_intensity": bool(randomize_intensity),
        "organ_contact": float(organ_contact),
        "bowel_contact": float(bowel_contact),
        "hypervascular": float(hypervascular),
        "anatomy": _plain(A),
        "intensity": _plain({**I, "mean": {NAMES.get(k, str(k)): v for k, v in I["mean"].items()},
                             "texture": {NAMES.get(k, str(k)): v for k, v in I["texture"].items()}}),
        "tissue_codes": {v: k for k, v in NAMES.items()},
        "timing_s": {"paint": round(t_paint - t_start, 3), "total": round(time.perf_counter() - t_start, 3),
                     "render": round(t_render - t_paint, 3)},
    }
