"""Turn a painted tissue-code map into a CT image (int16 HU).

Per slab of output slices: HU look-up per tissue, tissue texture (one
smooth random field scaled per tissue), partial-volume blur (scanner PSF
in-plane, slice profile along z: an average over sub-slices when the
phantom was painted finer than the slice spacing, plus a Gaussian), then
CT-like noise: white noise shaped in-plane by a noise power spectrum
``NPS(f) ~ f exp(-(f / f0)^2)`` (the ramp-filter shape, with the negative
side lobes of real CT noise), mixed with neighbouring slices for z
correlation. Each slice's white noise comes from its own seed, so the
result does not depend on the slab size.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import scipy.fft as sfft
from scipy import ndimage as ndi

from .phantom_field import Grid, Lattice

_SLAB = 24
_TRUNCATE = 3.0


def nps_filter(ny: int, nx: int, sy: float, sx: float, f0: float):
    """Half-plane amplitude filter (ny, nx//2+1) for ``rfft2`` and its variance gain."""
    fy = np.fft.fftfreq(ny, sy)[:, None]
    nps_full = np.hypot(fy, np.fft.fftfreq(nx, sx)[None, :])
    nps_full = nps_full * np.exp(-((nps_full / f0) ** 2))
    gain = float(nps_full.mean())
    f = np.hypot(fy, np.fft.rfftfreq(nx, sx)[None, :])
    H = np.sqrt(f * np.exp(-((f / f0) ** 2))).astype(np.float32)
    return H, gain


def _white(seed: int, k: int, shape) -> np.ndarray:
    # uniform white noise becomes Gaussian after the spectral filter (many terms) and is cheaper to draw
    g = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), 0x6E6F, int(k) + 1])))
    w = g.random(shape, dtype=np.float32)
    w -= np.float32(0.5)
    w *= np.float32(np.sqrt(12.0))
    return w


def render(tissue: np.ndarray, grid: Grid, sub: int, spacing_xyz: Sequence[float], lut_mean: np.ndarray,
           lut_tex: np.ndarray, texture: Lattice, I: Dict[str, object], noise_seed: int) -> np.ndarray:
    """CT image ``(nz, ny, nx)`` int16 from ``tissue`` painted with ``sub`` sub-slices per output slice."""
    nzp, ny, nx = tissue.shape
    nz = nzp // sub
    sx, sy, sz = (float(s) for s in spacing_xyz)
    psf = float(I["psf_sigma_mm"])
    if sub == 1:
        sig_z = max(sz / 2.355, psf) / sz
    else:
        sig_z = psf / (sz / sub)
    sig = (sig_z, psf / sy, psf / sx)
    mp = int(_TRUNCATE * sig_z + 0.5) + 1
    H, gain = nps_filter(ny, nx, sy, sx, float(I["nps_f0"]))
    rho = min(float(I["noise_zcorr"]), 0.7)
    # mixing n_k + c (n_k-1 + n_k+1) gives lag-1 correlation 2c / (1 + 2c^2) = rho
    c = (1 - np.sqrt(1 - 2 * rho * rho)) / (2 * rho) if rho > 1e-6 else 0.0
    scale = np.float32(float(I["noise_sd"]) / np.sqrt(gain * (1 + 2 * c * c)))
    lo = np.float32(I["clip_low"])
    out = np.empty((nz, ny, nx), np.int16)
    for k0 in range(0, nz, _SLAB):
        k1 = min(k0 + _SLAB, nz)
        p0, p1 = max(k0 * sub - mp, 0), min(k1 * sub + mp, nzp)
        t = tissue[p0:p1]
        hu = np.take(lut_mean, t)
        amp = np.take(lut_tex, t)
        amp *= texture.sample(grid.x, grid.y, grid.z[p0:p1])
        hu += amp
        del amp
        hu = ndi.gaussian_filter(hu, sig, mode="nearest", truncate=_TRUNCATE)
        hu = hu[k0 * sub - p0:k1 * sub - p0]
        if sub > 1:
            hu = hu.reshape(k1 - k0, sub, ny, nx).mean(axis=1)
        w = np.stack([_white(noise_seed, k, (ny, nx)) for k in range(k0 - 1, k1 + 1)])
        n = w[1:-1]
        if c:
            n = n + np.float32(c) * (w[:-2] + w[2:])
        n = sfft.irfft2(sfft.rfft2(n, workers=2) * H, s=(ny, nx), workers=2)
        n *= scale
        hu += n
        np.rint(hu, out=hu)
        np.clip(hu, lo, np.float32(3071), out=hu)
        out[k0:k1] = hu
    return out
