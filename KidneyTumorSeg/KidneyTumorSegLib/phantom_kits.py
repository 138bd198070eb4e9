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

from .phantom_field import Grid, box_field
from .phantom_params import T, allowed_soft, cyst_code, tumor_code


def _bbox(mask: np.ndarray):
    idx = [np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
    if any(len(i) == 0 for i in idx):
        return None
    return tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)


def _grow(sl, margin: Sequence[int], shape) -> Tuple[slice, ...]:
    return tuple(slice(max(s.start - m, 0), min(s.stop + m, n)) for s, m, n in zip(sl, margin, shape))


def _world(grid: Grid, sl, idx) -> np.ndarray:
    """World (x, y, z) of integer voxel indices ``idx`` (k, j, i arrays) inside crop ``sl``."""
    return np.stack([grid.x[idx[2] + sl[2].start], grid.y[idx[1] + sl[1].start], grid.z[idx[0] + sl[0].start]], axis=-1)


def find_kidneys(label: np.ndarray, grid: Grid) -> List[Dict[str, object]]:
    """Kidney components (label > 0) as dicts with ``slices``, ``centre_xyz``, ``extent_mm``, ``voxels``.

    Keeps the components holding at least 10 % of the largest one (at most
    four); sorted by x (patient right first).
    """
    sl = _bbox(label > 0)
    if sl is None:
        return []
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
        csl = _bbox(m)
        idx = np.nonzero(m[csl])
        w = _world(grid, tuple(slice(s.start + c.start, s.start + c.stop) for s, c in zip(sl, csl)), idx)
        gsl = tuple(slice(s.start + c.start, s.start + c.stop) for s, c in zip(sl, csl))
        out.append({"slices": gsl, "centre_xyz": w.mean(0), "extent_mm": w.max(0) - w.min(0),
                    "voxels": int(len(idx[0]))})
    out.sort(key=lambda d: float(d["centre_xyz"][0]))
    return out


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
        sl = _grow(comp["slices"], margin, label.shape)
        lab = label[sl]
        tb = tissue[sl]
        organ = lab > 0
        dout = ndi.distance_transform_edt(~organ, sampling=sp).astype(np.float32)
        fat_ok = allowed_soft()
        if ("right" if comp["centre_xyz"][0] < midline_x else "left") in contact:
            fat_ok[[T.LIVER, T.HEPVESSEL, T.SPLEEN]] = False
        fat = (dout > 0) & (dout < float(rng.uniform(8, 14))) & fat_ok[tb]
        tb[fat] = T.PERIRENAL
        din = ndi.distance_transform_edt(organ, sampling=sp).astype(np.float32)
        z, y, x = grid.z[sl[0]], grid.y[sl[1]], grid.x[sl[2]]
        Z, Y, X = (v.astype(np.float32) for v in (z[:, None, None], y[None, :, None], x[None, None, :]))
        kid = lab == 1
        tb[kid] = T.CORTEX
        cols = np.abs(box_field(rng, X, Y, Z, 14.0)) < 0.35
        tb[kid & (din > cortex_mm) & ~cols] = T.MEDULLA
        tb[kid & (din > cortex_mm + float(rng.uniform(9, 13)))] = T.SINUS_FAT
        cyst = lab == 3
        if cyst.any():
            cc, n = cc3d.connected_components(cyst, connectivity=26, return_N=True)
            for c in range(1, n + 1):
                tb[cc == c] = cyst_code(n_cyst)
                n_cyst += 1
        tum = lab == 2
        if not tum.any():
            continue
        het = box_field(rng, X, Y, Z, float(rng.uniform(5, 10)))
        q = np.clip(((het + 1.5) / 3.0 * T.TUMOR_LEVELS).astype(np.int16), 0, T.TUMOR_LEVELS - 1)
        cc, n = cc3d.connected_components(tum, connectivity=26, return_N=True)
        for c in range(1, n + 1):
            t_i = len(tumors)
            m = cc == c
            tb[m] = (tumor_code(t_i, 0) + q[m]).astype(np.uint8)
            csl = _bbox(m)
            dt = ndi.distance_transform_edt(m[csl], sampling=sp).astype(np.float32)
            idx = np.nonzero(m)
            w = _world(grid, sl, idx)
            vol_ml = float(len(idx[0]) * np.prod(sp) / 1000.0)
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
    return tumors, len(tumors), n_cyst
