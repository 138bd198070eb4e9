"""Kidneys, renal tumours and cysts of the phantom (synthetic shapes).

A kidney is a bent ellipsoid in its own frame (``u`` long axis towards the
upper pole, ``v`` lateral, ``w`` the third axis), tilted so that the upper
pole is medial and posterior and rotated so that the hilum faces
anteromedially. Inside: cortex, medullary pyramids separated by columns of
Bertin, renal sinus fat and pelvis; around it a perirenal fat capsule.
Lesions sit on the kidney surface: exophytic (centre outside the surface)
or endophytic (centre inside). World mm in LPS throughout.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import cc3d
import numpy as np

from .phantom_body import spine_at
from .phantom_field import Grid, box_field, local_coords, paint, paint_tube, rotation
from .phantom_params import SOFT_CODES, T, allowed, allowed_lesion, allowed_soft, cyst_code, tumor_code

SIDES = {"left": 1.0, "right": -1.0}  # sign of x away from the midline (LPS +x = patient left)


def kidney_frame(A: Dict[str, float], side: str) -> Dict[str, object]:
    s = SIDES[side]
    y_vb, _, _ = spine_at(A, A[f"{side}_z"])
    c = np.array([A["cx"] + s * A[f"{side}_x"], y_vb + A[f"{side}_y"], A["zr"] + A[f"{side}_z"]])
    al, be, ps = (np.deg2rad(A[f"{side}_{k}"]) for k in ("alpha", "beta", "psi"))
    eu = np.array([-s * np.sin(al), np.sin(be), np.cos(al) * np.cos(be)])
    R = rotation(eu, np.array([s * np.cos(ps), np.sin(ps), 0.0]))
    return {"side": side, "centre": c, "R": R, "radii": np.array([A[f"{side}_{k}"] for k in ("L", "W", "T")]),
            "bend": A[f"{side}_bend"], "cortex": A[f"{side}_cortex"], "sinus": A[f"{side}_sinus"],
            "fat": A[f"{side}_fat"], "contact": bool(A.get(f"{side}_contact", False))}


def _kidney_fields(K, X, Y, Z):
    u, v, w = local_coords(K["R"], K["centre"], X, Y, Z)
    L, W, Th = (np.float32(r) for r in K["radii"])
    v = v + np.float32(K["bend"]) * W * (u / L) ** 2  # poles bend medially: a bean
    return u, v, w, L, W, Th


def paint_kidney(tissue: np.ndarray, grid: Grid, A: Dict[str, float], K: Dict[str, object], rng: np.random.Generator) -> None:
    """Perirenal fat, parenchyma, sinus, pelvis, renal vessels and ureter of one kidney."""
    margin = 22.0
    r = float(max(K["radii"])) + margin
    b = grid.box(K["centre"] - r, K["centre"] + r)
    if b is None:
        return
    sl, X, Y, Z = b
    u, v, w, L, W, Th = _kidney_fields(K, X, Y, Z)
    f = (u / L) ** 2 + (v / W) ** 2 + (w / Th) ** 2
    tb = tissue[sl]
    m = np.float32(K["fat"])
    fe = (u / (L + m)) ** 2 + (v / (W + m)) ** 2 + (w / (Th + m)) ** 2 + np.float32(0.25) * box_field(rng, X, Y, Z, 20.0)
    fat_ok = allowed_soft()
    if K["contact"]:  # no fat plane: liver and spleen touch the capsule, as they often do in real CT
        fat_ok[[T.LIVER, T.HEPVESSEL, T.SPLEEN]] = False
    paint(tb, fe < 1, T.PERIRENAL, fat_ok)
    env = f < 1
    sf = np.float32(K["sinus"] / 0.42)
    sinus = ((u / (0.5 * L * sf)) ** 2 + ((v + 0.45 * W) / (0.55 * W * sf)) ** 2 + (w / (0.55 * Th * sf)) ** 2) < 1
    notch = (np.abs(u) < 0.22 * L) & (np.abs(w) < 0.35 * Th) & (v < -0.5 * W)
    ok = allowed(*SOFT_CODES)
    paint(tb, env & notch, T.PERIRENAL, ok)
    organ = paint(tb, env & ~notch, T.CORTEX, ok)
    # distance to the outer surface, first order: (1 - f) / |grad f|
    g = 2 * np.sqrt((u / L ** 2) ** 2 + (v / W ** 2) ** 2 + (w / Th ** 2) ** 2) + np.float32(1e-6)
    depth = (1 - f) / g
    cols = np.abs(box_field(rng, X, Y, Z, 14.0)) < 0.35
    med = organ & (depth > np.float32(K["cortex"])) & ~cols
    tb[med] = T.MEDULLA
    tb[organ & sinus] = T.SINUS_FAT
    pel = ((u / (0.25 * L)) ** 2 + ((v + 0.6 * W) / (0.3 * W)) ** 2 + (w / (0.25 * Th)) ** 2) < 1
    tb[organ & sinus & pel] = T.PELVIS_URINE
    _renal_vessels(tissue, grid, A, K)


def _renal_vessels(tissue, grid, A, K):
    s = SIDES[K["side"]]
    R, c = K["R"], K["centre"]
    hilum = c - R[:, 1] * K["radii"][1] * 0.9
    y_vb, rx, ry = spine_at(A, hilum[2] - A["zr"])
    ok = allowed_soft()
    ivc = (A["cx"] - A["ivc_x"], y_vb - ry - A["ivc_ry"] - 3, hilum[2] + 5)
    aorta = (A["cx"] + A["aorta_x"], y_vb - ry - A["aorta_r"] - 2, hilum[2] + 12)
    vein_mid = (0.5 * (hilum[0] + ivc[0]), min(hilum[1], ivc[1]) - (12 if s > 0 else 0), hilum[2] + 4)
    paint_tube(tissue, grid, [hilum - R[:, 1] * 2 - [0, 6, 0], vein_mid, ivc], 5.5, T.RENAL_VEIN, ok)
    paint_tube(tissue, grid, [hilum + [0, 4, 6], aorta], 3.0, T.RENAL_ARTERY, ok)
    low = -A["crest"] - 40
    paint_tube(tissue, grid, [hilum - [0, 0, 10], (A["cx"] + s * (rx + 10), y_vb - 5, A["zr"] - 60),
                              (A["cx"] + s * (rx + 15), y_vb - 10, A["zr"] + low)], 3.0, T.URETER, ok)


# --------------------------------------------------------------------------
# Lesions
# --------------------------------------------------------------------------
def _surface_point(rng, K, avoid_hilum=True):
    L, W, Th = K["radii"]
    while True:
        d = rng.standard_normal(3)
        d /= np.linalg.norm(d)
        if not avoid_hilum or d[1] > -0.3:
            break
    p = d / np.sqrt((d[0] / L) ** 2 + (d[1] / W) ** 2 + (d[2] / Th) ** 2)
    n = np.array([p[0] / L ** 2, p[1] / W ** 2, p[2] / Th ** 2])
    n /= np.linalg.norm(n)
    p = p.copy()
    p[1] -= K["bend"] * W * (p[0] / L) ** 2
    return p, n


def place_lesions(rng: np.random.Generator, kidneys: Dict[str, Dict[str, object]], n_tumors: int, n_cysts: int,
                  diameter_mm=(10.0, 100.0)) -> List[Dict[str, object]]:
    """Random tumours then cysts on the given kidneys, not overlapping one another."""
    out: List[Dict[str, object]] = []
    sides = sorted(kidneys)
    for kind, count in (("tumor", n_tumors), ("cyst", n_cysts)):
        for _ in range(count):
            for attempt in range(60):
                side = sides[int(rng.integers(len(sides)))]
                K = kidneys[side]
                if kind == "tumor":
                    d = float(np.clip(np.exp(rng.normal(np.log(40.0), 0.6)), *diameter_mm))
                    exo = bool(rng.random() < 0.55)
                    off = rng.uniform(0.05, 0.55) if exo else -rng.uniform(0.5, 0.9)
                else:
                    d = float(np.exp(rng.uniform(np.log(6.0), np.log(40.0))))
                    off = rng.uniform(-0.6, 0.5)
                    exo = bool(off > 0)
                if attempt > 30:
                    d = max(diameter_mm[0] if kind == "tumor" else 6.0, d * 0.7)
                r = d / 2
                p, n = _surface_point(rng, K)
                c = K["centre"] + K["R"] @ (p + n * off * r)
                if all(np.linalg.norm(c - o["centre_xyz"]) > r + o["diameter_mm"] / 2 + 3 for o in out):
                    break
            lesion = {"kind": kind, "side": side, "diameter_mm": d, "centre_xyz": c, "exophytic": exo}
            if kind == "tumor":
                # lobes stay within ~1.05 r of the centre, so the nominal diameter holds
                lobes = []
                for _ in range(int(rng.integers(0, 4))):
                    e = rng.standard_normal(3)
                    lobes.append((c + e / np.linalg.norm(e) * r * rng.uniform(0.25, 0.45), r * rng.uniform(0.4, 0.6)))
                lesion["lobes"] = lobes
                lesion["necrotic"] = bool(rng.random() < 0.15 + 0.5 * np.clip((d - 30) / 50, 0, 1))
                lesion["necrosis_radius"] = float(rng.uniform(0.35, 0.65))
            else:
                lesion["axes"] = rng.uniform(0.85, 1.15, 3)
            out.append(lesion)
    return out


def paint_lesions(tissue: np.ndarray, grid: Grid, lesions: List[Dict[str, object]], rng: np.random.Generator) -> None:
    """Cysts (sharp, homogeneous) and tumours (lobulated, heterogeneous, maybe necrotic)."""
    tumor_i, cyst_i = 0, 0
    ok = allowed_lesion()
    for les in lesions:
        c = np.asarray(les["centre_xyz"])
        r = les["diameter_mm"] / 2
        reach = r * 1.3 + 2
        b = grid.box(c - reach, c + reach)
        if b is None:
            if les["kind"] == "tumor":
                tumor_i += 1
            else:
                cyst_i += 1
            continue
        sl, X, Y, Z = b
        tb = tissue[sl]
        before = tb.copy()
        dx, dy, dz = X - np.float32(c[0]), Y - np.float32(c[1]), Z - np.float32(c[2])
        if les["kind"] == "cyst":
            a = les["axes"]
            rho = (dx / a[0]) ** 2 + (dy / a[1]) ** 2 + (dz / a[2]) ** 2
            paint(tb, rho < np.float32(r * r), cyst_code(cyst_i), ok)
            _keep_largest(tb, before, tb == cyst_code(cyst_i))
            cyst_i += 1
            continue
        rho = np.sqrt(dx * dx + dy * dy + dz * dz) / np.float32(r)
        rho += np.float32(0.06) * box_field(rng, X, Y, Z, 8.0)
        m = rho < 1
        for lc, lr in les["lobes"]:
            m |= ((X - np.float32(lc[0])) ** 2 + (Y - np.float32(lc[1])) ** 2 + (Z - np.float32(lc[2])) ** 2) < np.float32(lr * lr)
        het = box_field(rng, X, Y, Z, float(rng.uniform(5, 10)))
        q = np.clip(((het + 1.5) / 3.0 * T.TUMOR_LEVELS).astype(np.int16), 0, T.TUMOR_LEVELS - 1)
        m = m & ok[tb]
        tb[m] = (tumor_code(tumor_i, 0) + q[m]).astype(np.uint8)
        if les["necrotic"]:
            core = m & (rho + np.float32(0.25) * box_field(rng, X, Y, Z, 10.0) < np.float32(les["necrosis_radius"]))
            tb[core] = tumor_code(tumor_i, T.TUMOR_LEVELS)
        _keep_largest(tb, before, (tb >= tumor_code(tumor_i, 0)) & (tb <= tumor_code(tumor_i, T.TUMOR_LEVELS)))
        tumor_i += 1


def _keep_largest(tb: np.ndarray, before: np.ndarray, mask: np.ndarray) -> None:
    """A lesion clipped by muscle or bone can leave crumbs elsewhere: keep its largest piece only."""
    if not mask.any():
        return
    cc, n = cc3d.connected_components(mask, connectivity=26, return_N=True)
    if n > 1:
        big = int(np.argmax(np.bincount(cc.ravel())[1:])) + 1
        drop = mask & (cc != big)
        tb[drop] = before[drop]


def paint_kidneys(tissue: np.ndarray, grid: Grid, A: Dict[str, float], sides: Sequence[str], n_tumors: int,
                  n_cysts: int, diameter_mm: Tuple[float, float], r_field: np.random.Generator,
                  r_les: np.random.Generator) -> Tuple[Dict[str, object], List[Dict[str, object]], List[Dict[str, object]]]:
    """Paint the synthetic kidneys on ``sides``, then place and paint their lesions.

    Returns (kidney descriptions by side, tumours, cysts).
    """
    kid_info: Dict[str, object] = {}
    Ks = {s: kidney_frame(A, s) for s in sides}
    for s in sides:
        paint_kidney(tissue, grid, A, Ks[s], r_field)
        kid_info[s] = kidney_info(Ks[s])
    lesions = place_lesions(r_les, Ks, n_tumors, n_cysts, diameter_mm)
    paint_lesions(tissue, grid, lesions, r_field)
    tumors = [les for les in lesions if les["kind"] == "tumor"]
    cysts = [les for les in lesions if les["kind"] == "cyst"]
    return kid_info, tumors, cysts


def kidney_info(K: Dict[str, object]) -> Dict[str, object]:
    return {"side": K["side"], "centre_xyz": [float(v) for v in K["centre"]],
            "long_axis": [float(v) for v in K["R"][:, 0]], "half_axes_mm": [float(v) for v in K["radii"]],
            "cortex_mm": float(K["cortex"])}
