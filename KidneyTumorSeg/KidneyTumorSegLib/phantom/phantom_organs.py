"""Solid and hollow organs of the phantom, painted in 3D inside their bounding boxes.

Each organ is an implicit shape in world mm (LPS) placed relative to the
body (``A`` from ``phantom_params.sample_anatomy`` plus placement keys, see
``phantom_body``). Organs paint only over visceral fat (or what the
``allow`` table names), so they stay inside the abdominal cavity and never
cut into bone, muscle or the big vessels painted before them.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from .phantom_body import cavity, spine_at
from .phantom_field import Grid, box_field, local_coords, paint, paint_tube, rotation
from .phantom_params import T, allowed, allowed_soft


def _ellipsoid_box(grid: Grid, c, radii, pad: float = 2.0):
    r = max(radii) + pad
    return grid.box(np.asarray(c) - r, np.asarray(c) + r)


def _q(X, Y, Z, c, radii, R=None):
    if R is None:
        u, v, w = X - np.float32(c[0]), Y - np.float32(c[1]), Z - np.float32(c[2])
    else:
        u, v, w = local_coords(R, c, X, Y, Z)
    return (u / np.float32(radii[0])) ** 2 + (v / np.float32(radii[1])) ** 2 + (w / np.float32(radii[2])) ** 2


def paint_organs(tissue: np.ndarray, grid: Grid, A: Dict[str, float], rng: np.random.Generator) -> None:
    """Heart, liver (with vessels), gallbladder, spleen, stomach, pancreas, colon, small bowel and bladder."""
    _heart(tissue, grid, A)
    _liver(tissue, grid, A, rng)
    _spleen(tissue, grid, A)
    _stomach(tissue, grid, A)
    _pancreas(tissue, grid, A)
    _colon(tissue, grid, A, rng)
    _small_bowel(tissue, grid, A, rng)
    _bladder(tissue, grid, A)
    _hips(tissue, grid, A)


def _heart(tissue, grid, A):
    c = (A["cx"] + 15, A["cy"] - 0.15 * A["b"], A["zr"] + A["dome_r"] + 35)
    radii = (62.0, 50.0, 62.0)
    b = _ellipsoid_box(grid, c, radii)
    if b is None:
        return
    sl, X, Y, Z = b
    q = _q(X, Y, Z, c, radii)
    tb = tissue[sl]
    ok = allowed(T.VFAT, T.LUNG)
    paint(tb, q < 1, T.MYOCARDIUM, ok)
    ok[T.MYOCARDIUM] = True
    paint(tb, q < (1 - 10.0 / 55) ** 2, T.BLOOD, ok)


def _liver(tissue, grid, A, rng):
    zr, s = A["zr"], A["liver"]
    ac, bca, bcp = cavity(A, 80)
    c1 = (A["cx"] - 0.4 * ac, A["cy"] - 0.05 * A["b"], zr + 70)
    r1 = (0.62 * ac * s, 0.95 * 0.5 * (bca + bcp) * s, 95 * s)
    c2 = (A["cx"] + 0.15 * ac, A["cy"] - 0.5 * bca, zr + 105)
    r2 = (0.5 * ac * s, 0.35 * bca * s, 45 * s)
    lo = np.minimum(np.asarray(c1) - r1, np.asarray(c2) - r2)
    hi = np.maximum(np.asarray(c1) + r1, np.asarray(c2) + r2)
    b = grid.box(lo, hi)
    if b is None:
        return
    sl, X, Y, Z = b
    tb = tissue[sl]
    m = (_q(X, Y, Z, c1, r1) < 1) | (_q(X, Y, Z, c2, r2) < 1)
    m = paint(tb, m, T.LIVER, allowed(T.VFAT))
    if not m.any():
        return
    # portal and hepatic veins: tubes where two smooth random fields both cross zero, wider near the hilum
    n1 = np.abs(box_field(rng, X, Y, Z, 16.0))
    n2 = np.abs(box_field(rng, X, Y, Z, 16.0))
    hil = (A["cx"] - 0.15 * ac, A["cy"] - 0.1 * A["b"], zr + 55)
    d2 = (X - np.float32(hil[0])) ** 2 + (Y - np.float32(hil[1])) ** 2 + (Z - np.float32(hil[2])) ** 2
    w = np.float32(0.09) * (1 + 1.5 * np.exp(-d2 / np.float32(50.0 ** 2)))
    paint(tb, (n1 < w) & (n2 < w), T.HEPVESSEL, allowed(T.LIVER))
    if A["gallbladder"]:
        gc = (A["cx"] - 0.3 * ac, A["cy"] - 0.5 * bca, zr + 30)
        gr = (15.0, 17.0, 35.0)
        Rg = rotation([0.3, -0.4, 1.0], [1, 0, 0])
        b = _ellipsoid_box(grid, gc, gr)
        if b is not None:
            sl, X, Y, Z = b
            paint(tissue[sl], _q(X, Y, Z, gc, gr, Rg) < 1, T.GALLBLADDER, allowed(T.LIVER, T.HEPVESSEL, T.VFAT))


def _spleen(tissue, grid, A):
    # its lower pole reaches down beside the left kidney's upper pole when they touch
    zz = 75.0 - (A.get("spleen_drop_contact", 0.0) if A.get("left_contact") else 0.0)
    ac, bca, bcp = cavity(A, zz)
    s = A["spleen"]
    th = np.deg2rad(35)  # position on the posterolateral wall, measured from patient left towards the back
    c = np.array([A["cx"] + (ac - 24 * s) * np.cos(th), A["cy"] + (bcp - 24 * s) * np.sin(th), A["zr"] + zz])
    R = rotation([-np.sin(th), np.cos(th), -0.25], [np.cos(th), np.sin(th), 0])  # long axis along the wall
    radii = (55 * s, 24 * s, 55 * s)
    b = _ellipsoid_box(grid, c, radii)
    if b is None:
        return
    sl, X, Y, Z = b
    m = _q(X, Y, Z, c, radii, R) < 1
    inner = c - 45 * s * np.array([np.cos(th), np.sin(th), 0])
    m &= _q(X, Y, Z, inner, (42 * s,) * 3) > 1  # concave hilar side
    paint(tissue[sl], m, T.SPLEEN, allowed(T.VFAT))


def _stomach(tissue, grid, A):
    ac, bca, bcp = cavity(A, 100)
    s = A["stomach"]
    c = np.array([A["cx"] + 0.35 * ac, A["cy"] - 0.35 * bca, A["zr"] + 100])
    radii = (45 * s, 35 * s, 60 * s)
    R = rotation([0.35, 0.0, 1.0], [1, 0, 0])
    b = _ellipsoid_box(grid, c, radii)
    if b is None:
        return
    sl, X, Y, Z = b
    q = _q(X, Y, Z, c, radii, R)
    tb = tissue[sl]
    m = paint(tb, q < 1, T.STOMACH_WALL, allowed(T.VFAT))
    lumen = m & (q < (1 - 4.0 / radii[1]) ** 2)
    level = c[1] - radii[1] + 2 * radii[1] * A["stomach_air"]  # gas floats to the front (small y)
    tb[lumen] = T.BOWEL_FLUID
    tb[lumen & (Y < np.float32(level))] = T.GAS


def _pancreas(tissue, grid, A):
    zr = A["zr"]
    y_vb, rx, ry = spine_at(A, 30)
    ac, _, _ = cavity(A, 40)
    pts = [(A["cx"] - 28, y_vb - ry - 45, zr + 20), (A["cx"] + 5, y_vb - ry - 50, zr + 35),
           (A["cx"] + 0.35 * ac, y_vb - ry - 25, zr + 45), (A["cx"] + 0.6 * ac, y_vb, zr + 55)]
    paint_tube(tissue, grid, pts, 11.0, T.PANCREAS, allowed(T.VFAT))


def _colon(tissue, grid, A, rng):
    zr, cx, cy, b = A["zr"], A["cx"], A["cy"], A["b"]
    ac, bca, bcp = cavity(A, -40)
    r = A["colon_r"]
    y_vb, _, _ = spine_at(A, -A["crest"] - 60)
    low = -A["crest"]
    lat = ac - r - 6
    right = [(cx - lat, cy, zr + low - 20), (cx - lat, cy - 0.1 * b, zr + 20)]
    trans = [right[-1], (cx - 0.2 * ac, cy - bca + r + 8, zr - 10), (cx + 0.4 * ac, cy - bca + r + 8, zr + 10),
             (cx + lat, cy - 0.1 * b, zr + 55)]
    left = [trans[-1], (cx + lat, cy + 0.05 * b, zr + low)]
    sigmoid = [left[-1], (cx + 0.3 * ac, cy - 0.2 * b, zr + low - 40), (cx, y_vb - 35, zr + low - 100)]
    for seg in (right, trans, left, sigmoid):
        content = T.GAS if rng.random() < 0.3 else T.STOOL
        paint_tube(tissue, grid, seg, r * float(rng.uniform(0.8, 1.1)), content, allowed(T.VFAT),
                   wall=(2.5, T.BOWEL_WALL))
        if content == T.STOOL:  # mottled faeces: pockets of gas
            pts = np.asarray(seg)
            bx = grid.box(pts.min(0) - r, pts.max(0) + r)
            if bx is not None:
                sl, X, Y, Z = bx
                tb = tissue[sl]
                f = box_field(rng, X, Y, Z, 5.0)
                tb[(f > 1.0) & (tb == T.STOOL)] = T.GAS


def _small_bowel(tissue, grid, A, rng):
    zr = A["zr"]
    ac, bca, bcp = cavity(A, -40)
    y_vb, rx, ry = spine_at(A, -40)
    lo = (A["cx"] - ac, A["cy"] - bca, zr - A["crest"] - 120)
    hi = (A["cx"] + ac, y_vb, zr + 45)
    b = grid.box(lo, hi)
    if b is None:
        return
    sl, X, Y, Z = b
    n = box_field(rng, X, Y, Z, 12.0)
    # the retroperitoneum (behind the front of the spine) and the upper abdomen hold few loops
    back = np.float32(y_vb - ry - 15) + np.float32(40.0 / ac) * np.abs(X - np.float32(A["cx"]))
    # bowel_contact: on a side drawn for it, loops reach further back, to the kidney's front and side
    # (left is +x in the patient frame; a smooth step across the midline)
    for side, sign in (("left", 1.0), ("right", -1.0)):
        reach = float(A.get(f"{side}_bowel_reach", 0.0))
        if reach > 0:
            back += np.float32(reach) / (1 + np.exp(-np.float32(sign) * (X - np.float32(A["cx"])) / np.float32(15.0)))
    n -= np.float32(1.5) / (1 + np.exp(-(Y - back) / np.float32(8.0)))
    n -= np.float32(1.5) / (1 + np.exp(-(Z - np.float32(zr + 25)) / np.float32(10.0)))
    t0 = np.float32(A["bowel_t"])
    tb = tissue[sl]
    ok = allowed(T.VFAT)
    paint(tb, n > t0, T.BOWEL_WALL, ok)
    lumen = (n > t0 + np.float32(0.3)) & (tb == T.BOWEL_WALL)
    g = box_field(rng, X, Y, Z, 30.0)
    tb[lumen] = T.BOWEL_FLUID
    tb[lumen & (g > np.float32(A["bowel_gas"]))] = T.GAS


def _bladder(tissue, grid, A):
    zz = -A["crest"] - 95
    ac, bca, bcp = cavity(A, zz)
    s = A["bladder"]
    c = (A["cx"], A["cy"] - 0.45 * bca, A["zr"] + zz)
    radii = (45 * s, 38 * s, 35 * s)
    b = _ellipsoid_box(grid, c, radii)
    if b is None:
        return
    sl, X, Y, Z = b
    q = _q(X, Y, Z, c, radii)
    tb = tissue[sl]
    m = paint(tb, q < 1, T.MUSCLE, allowed_soft())
    tb[m & (q < (1 - 3.0 / radii[2]) ** 2)] = T.BLADDER


def _hips(tissue, grid, A):
    """Femoral heads, necks and shafts (cortical shell, cancellous core) below the iliac wings."""
    zz = -A["crest"] - 150
    ac, bca, bcp = cavity(A, zz)
    y_vb, _, _ = spine_at(A, zz)
    ok = allowed(T.VFAT, T.MUSCLE, T.SUBFAT, T.BOWEL_WALL, T.BOWEL_FLUID, T.GAS, T.STOOL, T.BLADDER)
    for s in (-1, 1):
        head = np.array([A["cx"] + s * 0.55 * ac, y_vb - 40, A["zr"] + zz])
        troch = head + [s * 45, 10, -40]
        pts = [head, troch, troch + [s * 5, 0, -200]]
        paint_tube(tissue, grid, pts[:2], 16.0, T.CANCELLOUS, ok, wall=(3.0, T.CORTICAL))
        paint_tube(tissue, grid, pts[1:], 14.0, T.CANCELLOUS, ok, wall=(4.0, T.CORTICAL))
        b = _ellipsoid_box(grid, head, (24.0,) * 3)
        if b is not None:
            sl, X, Y, Z = b
            q = _q(X, Y, Z, head, (24.0,) * 3)
            ok2 = ok.copy()
            ok2[[T.CANCELLOUS, T.CORTICAL]] = True
            paint(tissue[sl], q < 1, T.CORTICAL, ok2)
            paint(tissue[sl], q < (21.0 / 24) ** 2, T.CANCELLOUS, ok2)
