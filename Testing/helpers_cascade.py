"""Toy CTs with reference labels and the stage settings the cascade's tests run them with."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from KidneyTumorSegLib.config import StageConfig
from KidneyTumorSegLib.geometry.records import canonical_reorient
from KidneyTumorSegLib.geometry.volume import Volume

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def stages(fine=(2.5, 1.6, 1.6), tumor=(2.5, 1.0, 1.0), coarse=(3.4, 3.4, 3.4), keep=2):
    return {
        "roi": StageConfig("coarse", "roi", spacing=coarse, margin_mm=15.0, keep_components=keep),
        "kidney": StageConfig("kidney", "kidney", spacing=fine, keep_components=keep),
        "tumor": StageConfig("tumor", "tumor", spacing=tumor, mask_outside=True, margin_mm=10.0),
    }


def ellipsoid(shape, spacing_zyx, centre_mm, radii_mm):
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    d = ((k * spacing_zyx[0] - centre_mm[0]) / radii_mm[0]) ** 2
    d = d + ((j * spacing_zyx[1] - centre_mm[1]) / radii_mm[1]) ** 2
    d = d + ((i * spacing_zyx[2] - centre_mm[2]) / radii_mm[2]) ** 2
    return d <= 1.0


def toy_case(shape=(40, 120, 160), spacing_zyx=(3.0, 1.5, 1.5), kidneys=("right", "left"), tumors=True, direction=None):
    """Body ellipse with two kidney ellipsoids and tumors; identity direction unless given."""
    extent = np.array(shape) * np.array(spacing_zyx)
    img = np.full(shape, -1000, np.int16)
    body = ellipsoid(shape, spacing_zyx, extent / 2, (extent[0], extent[1] * 0.45, extent[2] * 0.45))
    img[body] = 40
    lab = np.zeros(shape, np.uint8)
    cz, cy = extent[0] / 2, extent[1] * 0.55
    xs = {"right": extent[2] * 0.3, "left": extent[2] * 0.7}  # LPS: +x (higher i) is the patient's left
    for side in kidneys:
        lab[ellipsoid(shape, spacing_zyx, (cz, cy, xs[side]), (30, 22, 18))] = 1
    if tumors:
        if "left" in kidneys:
            lab[ellipsoid(shape, spacing_zyx, (cz + 12, cy, xs["left"] + 12), (12, 12, 12))] = 2
        if "right" in kidneys:
            lab[ellipsoid(shape, spacing_zyx, (cz - 15, cy + 5, xs["right"] - 5), (8, 8, 8))] = 2
    sp = (spacing_zyx[2], spacing_zyx[1], spacing_zyx[0])
    image = Volume(img, spacing=sp, origin=(-100.0, -80.0, 300.0))
    label = Volume(lab, spacing=sp, origin=(-100.0, -80.0, 300.0))
    if direction is not None:
        # store the same anatomy with another axis order and direction (as KiTS19 does)
        image, label = _restore(image, direction), _restore(label, direction)
    return image, label


def _restore(vol: Volume, direction) -> Volume:
    """The same world content stored in an array whose direction is ``direction`` (signed permutation)."""
    target = Volume(np.zeros((1, 1, 1), vol.array.dtype), direction=tuple(np.asarray(direction).ravel()))
    rec = canonical_reorient(target)
    # build the stored array so that its canonical form equals vol
    inv_shape = tuple(np.array(vol.shape)[np.argsort(rec.perm)])
    rec_full = type(rec)(rec.perm, rec.flip, inv_shape)
    stored = rec_full.invert(vol.array)
    stored_vol = Volume(stored, spacing=(1, 1, 1), direction=target.direction)
    probe = rec_full.volume(stored_vol)
    # fix spacing/origin so that the canonical view has vol's geometry
    sp_perm = np.zeros(3)
    for n in range(3):
        sp_perm[2 - rec.perm[n]] = vol.spacing[2 - n]
    stored_vol = Volume(stored, spacing=tuple(sp_perm), direction=target.direction)
    probe = rec_full.volume(stored_vol)
    shift = np.asarray(vol.origin) - np.asarray(probe.origin)
    out = Volume(stored, spacing=tuple(sp_perm), origin=tuple(np.asarray(stored_vol.origin) + shift), direction=target.direction)
    assert np.allclose(rec_full.volume(out).origin, vol.origin)
    return out


def dice(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)

