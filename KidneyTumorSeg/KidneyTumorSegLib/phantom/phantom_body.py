"""Slice-by-slice anatomy of the phantom: body wall, lungs, spine, ribs, pelvis, big vessels, table.

These structures are extrusions whose cross-section changes slowly with
height, so they are painted one axial slice at a time on 2D arrays (the
3D organs come later, in ``phantom_organs``). ``A`` is the anatomy dict of
``phantom_params.sample_anatomy`` plus the world placement keys ``cx``,
``cy`` (body centre), ``y_vb`` (vertebral body centre) and ``zr`` (L1/L2
disc height), all mm in LPS.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from .phantom_field import Grid
from .phantom_params import T


def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def body_profile(A: Dict[str, float], zz: float):
    """Half width, anterior and posterior half depth (mm) of the body at height ``zz`` above L1/L2."""
    s = 1.0 + A["chest"] * _sig((zz - 130) / 30) + A["hips"] * _sig(-(zz + 170) / 30)
    s += A["wiggle"] * np.sin(zz / 70.0 + A["wiggle_phase"])
    a = A["a"] * s
    ba = A["b"] * A["b_ant"] * s * (1 + A["belly"] * np.exp(-(((zz + 60) / 100) ** 2)))
    bp = A["b"] * A["b_post"] * s
    return a, ba, bp


def cavity(A: Dict[str, float], zz: float):
    """Half width, anterior and posterior half depth (mm) of the abdominal cavity at height ``zz``."""
    a, ba, bp = body_profile(A, zz)
    w = wall_depth(A, zz)
    return a - w, ba - w, bp - w


def wall_depth(A: Dict[str, float], zz: float) -> float:
    """Depth (mm) of the inner surface of the muscle wall, the cavity boundary, at height ``zz`` (nominal)."""
    return A["skin"] + A["fat"] * (1 + 0.2 * _sig(-zz / 60)) + A["wall"] * (1 + 0.3 * _sig((zz - 80) / 20))


def spine_at(A: Dict[str, float], zz: float):
    """Vertebral body centre y (world), half width and half depth (mm) at height ``zz``."""
    y = A["y_vb"] - A["lordosis"] * np.exp(-(((zz + 50) / 120) ** 2))
    rx = A["vb_rx"] * (1 - 0.25 * _sig((zz - 60) / 30) + 0.08 * _sig(-(zz + 100) / 30))
    below = -zz - A["crest"] - 20
    if below > 0:  # sacrum curves backwards
        y += 0.45 * below
    return y, rx, rx * A["vb_ry_f"]


class _Plane:
    """2D (row, column) coordinate arrays of one axial slice, relative to the body centre."""

    def __init__(self, grid: Grid, A: Dict[str, float]):
        self.X = (grid.x[None, :] - A["cx"]).astype(np.float32)
        self.Y = (grid.y[:, None] - A["cy"]).astype(np.float32)
        X, Y = np.broadcast_arrays(self.X, self.Y)
        self.r = np.hypot(X, Y) + np.float32(1e-3)
        th = np.arctan2(Y, X)
        c2 = (X / self.r) ** 2
        s2 = (Y / self.r) ** 2
        post = Y > 0
        self.c2, self.s2p, self.s2a = c2, np.where(post, s2, 0).astype(np.float32), np.where(post, 0, s2).astype(np.float32)
        self.mod = (1 - A["square"] * np.cos(4 * th) + A["asym_c"] * np.cos(th) + A["asym_s"] * np.sin(th)
                    - A["flat_back"] * np.clip(np.sin(th), 0, None) ** 6).astype(np.float32)
        self.fatmod = np.clip(1 + A["fat_c2"] * np.cos(2 * th) + A["fat_s1"] * np.sin(th), 0.3, None).astype(np.float32)
        # linea alba: the anterior wall thins at the midline
        ant = np.abs(th + np.pi / 2)
        self.wallmod = (1 - 0.6 * np.exp(-((ant / 0.06) ** 2))).astype(np.float32)
        self.theta_post = np.abs(np.arctan2(X, Y)).astype(np.float32)  # 0 at the back midline, pi at the front


def paint_slices(tissue: np.ndarray, grid: Grid, A: Dict[str, float]) -> None:
    """Paint every slice of ``tissue`` (k, j, i) with the body wall, thorax, spine, ribs, pelvis and vessels."""
    P = _Plane(grid, A)
    Xw = grid.x[None, :].astype(np.float32)
    Yw = grid.y[:, None].astype(np.float32)
    zdia, mediast = _diaphragm(P, A)
    table = _table(P, A, grid)
    for k, z in enumerate(grid.z):
        zz = float(z - A["zr"])
        t = tissue[k]
        a, ba, bp = body_profile(A, zz)
        R = P.mod / np.sqrt(P.c2 / np.float32(a * a) + P.s2a / np.float32(ba * ba) + P.s2p / np.float32(bp * bp))
        depth = R - P.r
        tf = np.float32(A["skin"]) + np.float32(A["fat"] * (1 + 0.2 * _sig(-zz / 60))) * P.fatmod
        tw = tf + np.float32(A["wall"] * (1 + 0.3 * _sig((zz - 80) / 20))) * P.wallmod
        t[...] = T.AIR
        t[depth > 0] = T.SKIN
        t[depth > A["skin"]] = T.SUBFAT
        t[depth > tf] = T.MUSCLE
        cav = depth > tw
        t[cav] = T.VFAT
        if table is not None:
            np.copyto(t, table, where=(t == T.AIR) & (table != T.AIR))
        above = z > zdia - 5
        if above.any():
            t[cav & above & (z <= zdia)] = T.MUSCLE  # diaphragm
            t[cav & (z > zdia) & ~mediast] = T.LUNG
        y_vb, rx, ry = spine_at(A, zz)
        _vessels(t, Xw, Yw, A, zz, y_vb, ry)
        _muscles(t, P, Xw, Yw, A, zz, y_vb, rx, ry, depth > tf)
        _spine(t, Xw, Yw, A, zz, y_vb, rx, ry)
        if zz > 1.5 * A["level"] - A["rib_drop"] - 15:
            _ribs(t, P, A, zz, depth, tf, tw)
        if zz < -A["crest"] - 10:
            _gluteal(t, Xw, Yw, A, zz, y_vb, a, depth > tf)
        if -A["crest"] - 100 < zz < -A["crest"]:
            _pelvis(t, Xw, Yw, A, zz, y_vb, rx, ry, a, bp)


def _ellipse(Xw, Yw, cx, cy, rx, ry):
    return ((Xw - np.float32(cx)) / np.float32(rx)) ** 2 + ((Yw - np.float32(cy)) / np.float32(ry)) ** 2


def _diaphragm(P: _Plane, A: Dict[str, float]):
    """Height map of the diaphragm (world z per row/column) and the mediastinum mask."""
    u = P.X / np.float32(0.9 * A["a"])
    v = P.Y / np.float32(0.9 * A["b"])
    zr = A["zr"]
    top_r = zr + A["dome_r"]
    top_l = top_r - A["dome_l_drop"]
    zR = top_r - A["recess"] * (((u + 0.45) / 0.55) ** 2 + ((v + 0.15) / 0.9) ** 2)
    zL = top_l - A["recess"] * (((u - 0.45) / 0.55) ** 2 + ((v + 0.15) / 0.9) ** 2)
    zc = top_l - 20 - A["recess"] * ((u / 0.4) ** 2 + ((v + 0.2) / 0.6) ** 2)
    zdia = np.maximum(np.maximum(zR, zL), np.maximum(zc, zr + 15)).astype(np.float32)
    y_vb_rel = A["y_vb"] - A["cy"]
    front = -A["b"] * A["b_ant"]
    med = ((P.X - 12) / 55.0) ** 2 + ((P.Y - (y_vb_rel + front) / 2) / (0.6 * (y_vb_rel - front))) ** 2 < 1
    return zdia, med | ((np.abs(P.X - 8) < 30) & (P.Y > y_vb_rel - 40) & (P.Y < y_vb_rel + 5))


def _table(P: _Plane, A: Dict[str, float], grid: Grid):
    if not A["table"]:
        return None
    y0 = A["b"] * A["b_post"] * (1 + A["chest"] + A["hips"]) + A["table_gap"]
    yt = y0 - 0.0012 * P.X ** 2
    half = 0.42 * (grid.x[-1] - grid.x[0])
    inside = np.abs(P.X) < half
    out = np.full(P.r.shape, T.AIR, np.uint8)
    out[inside & (P.Y >= yt) & (P.Y < yt + 2.5)] = T.TABLE
    out[inside & (P.Y >= yt + 2.5) & (P.Y < yt + 30)] = T.TABLE_FOAM
    return out


def _vessels(t, Xw, Yw, A, zz, y_vb, ry):
    cx = A["cx"]
    ok = (t == T.VFAT) | (t == T.MUSCLE) | (t == T.LUNG)
    ra = A["aorta_r"] * (1 - 0.15 * _sig(-zz / 50))
    bif = -A["z_bif"]
    if zz > bif:
        shift = _sig((zz - A["dome_r"] + 40) / 15)
        m = _ellipse(Xw, Yw, cx + A["aorta_x"] + 8 * shift, y_vb - ry - ra - 2 + 10 * shift, ra, ra) < 1
        t[m & ok] = T.AORTA
    elif zz > -A["crest"] - 100:
        d = 0.45 * (bif - zz) + 5
        for s in (-1, 1):
            m = _ellipse(Xw, Yw, cx + 0.5 * A["aorta_x"] + s * d, y_vb - ry - 0.6 * ra, 0.62 * ra, 0.62 * ra) < 1
            t[m & ok] = T.AORTA
    if zz < A["dome_r"] + 15:
        hep = _sig((zz - 60) / 15)
        if zz > bif - 10:
            m = _ellipse(Xw, Yw, cx - A["ivc_x"] - 5 * hep, y_vb - ry - A["ivc_ry"] - 3 - 15 * hep,
                         A["ivc_rx"], A["ivc_ry"] * (1 + 0.3 * hep)) < 1
            t[m & ok] = T.IVC
        elif zz > -A["crest"] - 100:
            d = 0.45 * (bif - 10 - zz) + 8
            for s in (-1, 1):
                m = _ellipse(Xw, Yw, cx - 0.3 * A["ivc_x"] + s * d, y_vb - ry + 2, 0.6 * A["ivc_rx"], 0.7 * A["ivc_ry"]) < 1
                t[m & ok] = T.IVC


def _muscles(t, P, Xw, Yw, A, zz, y_vb, rx, ry, inner):
    cx = A["cx"]
    yc = y_vb + ry + A["canal"] + 1
    ok = inner & ((t == T.VFAT) | (t == T.MUSCLE) | (t == T.LUNG))
    for s in (-1, 1):
        m = _ellipse(Xw, Yw, cx + s * (A["canal"] + 22), yc + 24, 26, 26) < 1
        t[m & ok] = T.MUSCLE
        if -110 < zz < 40:  # quadratus lumborum
            m = _ellipse(Xw, Yw, cx + s * (rx + 40), y_vb + 38, 18, 11) < 1
            t[m & (t == T.VFAT)] = T.MUSCLE
        if zz < 40:  # psoas grows towards the pelvis, then slides forwards
            r = A["psoas_r"] * float(np.clip((40 - zz) / 150, 0.25, 1.0))
            below = max(-zz - A["crest"], 0.0)
            m = _ellipse(Xw, Yw, cx + s * (rx + 0.8 * r + 0.3 * below), y_vb - 0.1 * r - 0.5 * below, r, 0.85 * r) < 1
            t[m & (t == T.VFAT)] = T.MUSCLE


def _spine(t, Xw, Yw, A, zz, y_vb, rx, ry):
    if zz < -A["crest"] - 110:
        return
    cx, P = A["cx"], A["level"]
    phase = zz % P
    q = _ellipse(Xw, Yw, cx, y_vb, rx, ry)
    if phase < A["disc"]:
        t[q < 1.05] = T.DISC
    else:
        endplate = phase < A["disc"] + 1.2 or phase > P - 1.2
        t[q < 1] = T.CORTICAL
        if not endplate:
            t[q < (1 - 2.0 / ry) ** 2] = T.CANCELLOUS
    below = -zz - A["crest"]
    if 10 < below < 70:  # sacral ala towards the sacroiliac joints
        qa = _ellipse(Xw, Yw, cx, y_vb + 5, rx + 28, 0.8 * ry)
        t[qa < 1] = T.CORTICAL
        t[qa < 0.8] = T.CANCELLOUS
    rc = A["canal"]
    yc = y_vb + ry + rc + 1
    dc = np.sqrt(_ellipse(Xw, Yw, cx, yc, 1, 1))
    if phase >= A["disc"]:
        arch = (dc >= rc) & (dc < rc + 5.5) & (Yw > yc - 0.3 * rc)
        t[arch] = T.CORTICAL
        ax = np.abs(Xw - np.float32(cx))
        if phase > 0.3 * P:  # spinous process, angled downwards: longer in the lower part of a level
            reach = 28.0 * min((phase - 0.3 * P) / (0.5 * P), 1.0)
            sp = (ax < 3.5) & (Yw >= yc + rc + 2) & (Yw < yc + rc + 2 + reach)
            t[sp] = T.CORTICAL
            t[sp & (ax < 1.8)] = T.CANCELLOUS
        if 0.5 * P < phase < 0.7 * P and -5 * P < zz < 1.5 * P:  # lumbar transverse processes, tapering
            tl = ax - np.float32(rc + 3)
            tp = (np.abs(Yw - np.float32(yc - 0.3 * rc) - 0.15 * tl) < 3.0 - 0.05 * tl) & (tl >= 0) & (tl < 28)
            t[tp] = T.CORTICAL
    t[dc < rc] = T.CSF
    if zz > -P:
        t[dc < 0.45 * rc] = T.CORD


def _ribs(t, P, A, zz, depth, tf, tw):
    """Ribs descend from back to front; rib n's height at angle phi from the back midline is z_n - drop(phi)."""
    mid = 0.5 * (tf + tw)
    band = np.abs(depth - mid) < 4.5
    if not band.any():
        return
    idx = np.nonzero(band)
    phi = P.theta_post[idx]
    dz = A["rib_dz"]
    z12 = 1.5 * A["level"]
    nf = 12 - (zz + A["rib_drop"] * (phi / np.pi) ** 1.3 - z12) / dz
    n = np.rint(nf)
    dist = np.abs(nf - n) * dz
    reach = np.where(n >= 12, 0.45, np.where(n >= 11, 0.6, 0.83)) * np.pi
    cart_reach = np.where(n <= 7, 1.01, np.where(n <= 10, 0.95, 0.0)) * np.pi
    # ribs start beside the paraspinal muscles; their heads at the spine are left out
    on = (dist < A["rib_h"]) & (n >= 1) & (phi > 0.18 * np.pi)
    bone = on & (phi < reach)
    cart = on & (phi >= reach) & (phi < cart_reach)
    radial = np.abs(depth[idx] - mid[idx])
    core = bone & (dist < A["rib_h"] - 1.5) & (radial < 3.0)
    t[idx[0][bone], idx[1][bone]] = T.CORTICAL
    t[idx[0][core], idx[1][core]] = T.CANCELLOUS
    t[idx[0][cart], idx[1][cart]] = T.CARTILAGE
    if zz > A["dome_r"] - 40:  # sternum
        st = band & (np.abs(P.X) < 15) & (P.Y < 0)
        t[st] = T.CORTICAL
        t[st & (np.abs(P.X) < 12) & (np.abs(depth - mid) < 3)] = T.CANCELLOUS


def _gluteal(t, Xw, Yw, A, zz, y_vb, a, inner):
    """Gluteal muscle masses behind and beside the pelvis, growing below the iliac crest."""
    rel = min((-A["crest"] - 10 - zz) / 60.0, 1.0)
    ok = inner & ((t == T.VFAT) | (t == T.SUBFAT) | (t == T.MUSCLE))
    for s in (-1, 1):
        m = _ellipse(Xw, Yw, A["cx"] + s * 0.42 * a, y_vb + 30, 0.3 * a * rel + 5, 38 * rel + 5) < 1
        m |= _ellipse(Xw, Yw, A["cx"] + s * 0.68 * a, y_vb - 5, 28 * rel + 5, 45 * rel + 5) < 1
        t[m & ok] = T.MUSCLE


def _pelvis(t, Xw, Yw, A, zz, y_vb, rx, ry, a, bp):
    """Iliac wings as thick curved plates from the sacroiliac joint forwards, with muscle on both sides."""
    rel = -A["crest"] - zz  # 0 at the crest, grows downwards
    th = 4 + 3 * rel / 100
    b = A["b"]
    for s in (-1, 1):
        pts = []
        for u in np.linspace(0, 1, 16):
            p0 = np.array([s * (rx + 18), y_vb + 12])
            p1 = np.array([s * 0.62 * a, y_vb - 5])
            p2 = np.array([s * 0.7 * a, y_vb - 0.45 * b])
            pts.append((1 - u) ** 2 * p0 + 2 * u * (1 - u) * p1 + u ** 2 * p2)
        pts = np.array(pts)
        pts[:, 0] += A["cx"]
        lo = pts.min(0) - th - 16
        hi = pts.max(0) + th + 16
        cols = np.nonzero((Xw[0] >= lo[0]) & (Xw[0] <= hi[0]))[0]
        rows = np.nonzero((Yw[:, 0] >= lo[1]) & (Yw[:, 0] <= hi[1]))[0]
        if len(cols) == 0 or len(rows) == 0:
            continue
        sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        xs, ys = Xw[:, sl[1]], Yw[sl[0], :]
        d = np.full((len(rows), len(cols)), np.inf, np.float32)
        for p, q in zip(pts[:-1], pts[1:]):
            e = q - p
            L2 = float(e @ e)
            tt = np.clip(((xs - p[0]) * e[0] + (ys - p[1]) * e[1]) / L2, 0, 1)
            d = np.minimum(d, np.hypot(xs - p[0] - tt * e[0], ys - p[1] - tt * e[1]))
        ts = t[sl]
        ts[(d < th + 15) & (ts == T.VFAT)] = T.MUSCLE
        ts[d < th] = T.CORTICAL
        ts[d < th - 1.5] = T.CANCELLOUS
