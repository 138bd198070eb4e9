"""Phantom kidneys and lesions taken from a real KiTS label map.

Works on the label reoriented to canonical order (array axes z, y, x with
directions close to LPS +z, +y, +x), so world positions follow from the
painted :class:`~.phantom_field.Grid`. Kidney, tumour and cyst voxels are
painted unconditionally, so the image agrees with the reference label
voxel for voxel; the rest of the synthetic body is placed around them.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import cc3d
import numpy as np
from scipy import ndimage as ndi

from ..geometry.boxes import box_from_mask, box_slices, expand_box
from ..findings.measure import component_volume_ml
from .phantom_field import Grid, box_field
from .phantom_params import T, allowed_soft, cyst_code, tumor_code


def _world(grid: Grid, sl, idx) -> np.ndarray:
    """World (x, y, z) of integer voxel indices ``idx`` (k, j, i arrays) inside crop ``sl``."""
    return np.stack([grid.x[idx[2] + sl[2].start], grid.y[idx[1] + sl[1].start], grid.z[idx[0] + sl[0].start]], axis=-1)


def find_kidneys(label: np.ndarray, grid: Grid) -> List[Dict[str, object]]:
    """Kidney components (label > 0) as dicts with ``slices``, ``centre_xyz``, ``extent_mm``, ``voxels``.

    Keeps the components holding at least 10 % of the largest one (at most
    four); sorted by x (patient right first).
    """
    organ = label > 0
    if not organ.any():  # box_from_mask raises on an empty mask: a label without kidneys has none
        return []
    sl = box_slices(box_from_mask(organ))
    cc, n = cc3d.connected_components(label[sl] > 0, connectivity=26, return_N=True)
    if n == 0:
        return []
    counts = np.bincount(cc.ravel())[1:]
    order = np.argsort(counts)[::-1]
    keep = [int(order[0]) + 1] + [int(o) + 1 for o in order[1:] if counts[o] >= 0.1 * counts[order[0]]]
    keep = keep[:4]
    out = []
    for lab in keep:
        m = cc == lab
        csl = box_slices(box_from_mask(m))
        idx = np.nonzero(m[csl])
        gsl = tuple(slice(s.start + c.start, s.start + c.stop) for s, c in zip(sl, csl))
        w = _world(grid, gsl, idx)
        out.append({"slices": gsl, "centre_xyz": w.mean(0), "extent_mm": w.max(0) - w.min(0),
                    "voxels": int(len(idx[0]))})
    out.sort(key=lambda d: float(d["centre_xyz"][0]))
    return out


def paint_kits_kidneys(tissue: np.ndarray, grid: Grid, label: np.ndarray, comps: List[Dict[str, object]], sub: int,
                       spacing_xyz: Sequence[float], A: Dict[str, float], rng: np.random.Generator
                       ) -> Tuple[Dict[str, object], List[Dict[str, object]], List[Dict[str, object]]]:
    """Paint the kidneys, tumours and cysts of the canonical reference ``label`` into ``tissue``.

    ``label`` and ``comps`` (its :func:`find_kidneys`) are on the output
    grid; ``tissue`` and ``grid`` have ``sub`` sub-slices per output slice.
    Returns (kidney descriptions by side, tumours, cysts).
    """
    sp = spacing_xyz
    label_p = np.repeat(label, sub, axis=0) if sub > 1 else label
    comps_p = find_kidneys(label_p, grid)
    tumors, _, n_cy = paint_label_kidneys(tissue, grid, label_p, comps_p, (sp[2] / sub, sp[1], sp[0]),
                                          rng, 0.5 * (A["left_cortex"] + A["right_cortex"]),
                                          contact=[sd for sd in ("left", "right") if A[f"{sd}_contact"]],
                                          midline_x=A["cx"])
    for les in tumors:
        les["side"] = "left" if les["centre_xyz"][0] > A["cx"] else "right"
    kid_info: Dict[str, object] = {}
    for c in comps:
        side = "left" if c["centre_xyz"][0] > A["cx"] else "right"
        kid_info.setdefault(side, {"side": side, "centre_xyz": [float(v) for v in c["centre_xyz"]],
                                   "extent_mm": [float(v) for v in c["extent_mm"]]})
    return kid_info, tumors, [{"kind": "cyst"} for _ in range(n_cy)]


def paint_label_kidneys(tissue: np.ndarray, grid: Grid, label: np.ndarray, comps: List[Dict[str, object]],
                        spacing_zyx: Sequence[float], rng: np.random.Generator, cortex_mm: float,
                        contact: Sequence[str] = (), midline_x: float = 0.0
                        ) -> Tuple[List[Dict[str, object]], int, int]:
    """Paint perirenal fat, kidney interior, tumours and cysts from ``label`` (same grid as ``tissue``).

    Kidneys on a side in ``contact`` (right: x below ``midline_x``, LPS) get
    no fat plane against the liver and spleen.

    Returns (tumour descriptions, number of tumours, number of cysts).
    """
    sp = np.asarray(spacing_zyx, float)
    margin = [int(np.ceil(15.0 / s)) for s in sp]
    tumors: List[Dict[str, object]] = []
    n_cyst = 0
    for comp in comps:
        sl = box_slices(expand_box(tuple((s.start, s.stop) for s in comp["slices"]), margin, label.shape))
        lab = label[sl]
        tb = tissue[sl]
        z, y, x = grid.z[sl[0]], grid.y[sl[1]], grid.x[sl[2]]
        XYZ = tuple(v.astype(np.float32) for v in (x[None, None, :], y[None, :, None], z[:, None, None]))
        touch = ("right" if comp["centre_xyz"][0] < midline_x else "left") in contact
        _paint_kidney_tissue(tb, lab, XYZ, sp, rng, cortex_mm, touch)
        n_cyst = _paint_cysts(tb, lab == 3, n_cyst)
        tum = lab == 2
        if tum.any():
            _paint_tumors(tb, tum, grid, sl, XYZ, sp, rng, tumors)
    return tumors, len(tumors), n_cyst


def _paint_kidney_tissue(tb: np.ndarray, lab: np.ndarray, XYZ, sp: np.ndarray, rng: np.random.Generator,
                         cortex_mm: float, touch: bool) -> None:
    """Perirenal fat around the labelled organ, then cortex, medulla and sinus fat inside label 1."""
    X, Y, Z = XYZ
    organ = lab > 0
    dout = ndi.distance_transform_edt(~organ, sampling=sp).astype(np.float32)
    fat_ok = allowed_soft()
    if touch:  # no fat plane: liver and spleen touch the kidney, as they often do in real CT
        fat_ok[[T.LIVER, T.HEPVESSEL, T.SPLEEN]] = False
    fat = (dout > 0) & (dout < float(rng.uniform(8, 14))) & fat_ok[tb]
    tb[fat] = T.PERIRENAL
    din = ndi.distance_transform_edt(organ, sampling=sp).astype(np.float32)
    kid = lab == 1
    tb[kid] = T.CORTEX
    cols = np.abs(box_field(rng, X, Y, Z, 14.0)) < 0.35
    tb[kid & (din > cortex_mm) & ~cols] = T.MEDULLA
    tb[kid & (din > cortex_mm + float(rng.uniform(9, 13)))] = T.SINUS_FAT


def _paint_cysts(tb: np.ndarray, cyst: np.ndarray, n_cyst: int) -> int:
    """One cyst code per connected cyst of the label, numbered on from ``n_cyst``; returns the new count."""
    if cyst.any():
        cc, n = cc3d.connected_components(cyst, connectivity=26, return_N=True)
        for c in range(1, n + 1):
            tb[cc == c] = cyst_code(n_cyst)
            n_cyst += 1
    return n_cyst


def _paint_tumors(tb: np.ndarray, tum: np.ndarray, grid: Grid, sl, XYZ, sp: np.ndarray, rng: np.random.Generator,
                  tumors: List[Dict[str, object]]) -> None:
    """Heterogeneous tumour codes (maybe a necrotic core) per connected tumour of the label; appends descriptions."""
    X, Y, Z = XYZ
    het = box_field(rng, X, Y, Z, float(rng.uniform(5, 10)))
    q = np.clip(((het + 1.5) / 3.0 * T.TUMOR_LEVELS).astype(np.int16), 0, T.TUMOR_LEVELS - 1)
    cc, n = cc3d.connected_components(tum, connectivity=26, return_N=True)
    for c in range(1, n + 1):
        t_i = len(tumors)
        m = cc == c
        tb[m] = (tumor_code(t_i, 0) + q[m]).astype(np.uint8)
        csl = box_slices(box_from_mask(m))
        dt = ndi.distance_transform_edt(m[csl], sampling=sp).astype(np.float32)
        w = _world(grid, sl, np.nonzero(m))
        vol_ml = component_volume_ml(m, sp)
        eq_d = float((6.0 * vol_ml * 1000.0 / np.pi) ** (1.0 / 3.0))
        necrotic = bool(eq_d > 25 and rng.random() < 0.15 + 0.5 * np.clip((eq_d - 30) / 50, 0, 1))
        if necrotic:
            f = 0.25 * box_field(rng, X[..., csl[2]], Y[:, csl[1]], Z[csl[0]], 10.0)
            core = m[csl] & ((dt / max(float(dt.max()), 1e-3)) + f > float(rng.uniform(0.45, 0.65)))
            sub = tb[csl]
            sub[core] = tumor_code(t_i, T.TUMOR_LEVELS)
        tumors.append({"kind": "tumor", "centre_xyz": w.mean(0), "diameter_mm": float((w.max(0) - w.min(0)).max()),
                       "equivalent_diameter_mm": eq_d, "volume_ml": vol_ml, "necrotic": necrotic,
                       "exophytic": None})
