"""Batched training augmentation on torch tensors, on whatever device they live on.

``augment_batch(image (N, C, k, j, i), label (N, k, j, i) or (N, C', k, j, i))``:

* spatial, identical for image and label: rotation (mainly about the axial
  axis ``k``; optionally all axes), isotropic scaling, flips of each axis,
  optional elastic deformation. Rotation and scaling act in millimetres
  (``spacing``), so anisotropic voxels are not sheared. They are combined
  into one sampling grid and one ``grid_sample`` call per batch (image
  linear, label ``mode="nearest"``, so no new label values appear);
  samples that are only flipped use ``torch.flip`` instead (exact). The
  image is padded with ``pad_value`` (default: each sample's minimum, i.e.
  air), the label with 0;
* intensity, image only (nnU-Net's order): Gaussian noise, Gaussian blur,
  multiplicative brightness, contrast, simulated low resolution, gamma.

Every transform fires per sample with its own probability. All random
numbers come from ``generator``, drawn on the generator's device: pass a
generator on the tensors' device (``torch.Generator(device="cuda")``) on a
GPU so noise fields need no copy; the same generator state and input give
the same output.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

Range = Tuple[float, float]


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (per sample) and ranges; angles in degrees, ``elastic_magnitude_mm`` in mm.

    ``rotation_other_deg`` > 0 also rotates about the two in-plane axes.
    ``p_flip`` is per axis in ``flip_axes`` (patch axes 0=k, 1=j, 2=i).
    ``elastic_grid_points``: control points per axis of the smooth random
    displacement (fewer = smoother). Intensity ranges act on normalised
    images (``noise_std`` and ``blur_sigma`` in normalised units / voxels).
    """

    p_rotation: float = 0.2
    rotation_axial_deg: float = 15.0
    rotation_other_deg: float = 0.0
    p_scale: float = 0.2
    scale_range: Range = (0.85, 1.25)
    p_flip: float = 0.5
    flip_axes: Tuple[int, ...] = (0, 1, 2)
    p_elastic: float = 0.0
    elastic_magnitude_mm: Range = (2.0, 6.0)
    elastic_grid_points: int = 5
    p_noise: float = 0.1
    noise_std: Range = (0.0, 0.1)
    p_blur: float = 0.2
    blur_sigma: Range = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness_range: Range = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast_range: Range = (0.75, 1.25)
    p_lowres: float = 0.25
    lowres_zoom: Range = (0.5, 1.0)
    p_gamma: float = 0.3
    gamma_range: Range = (0.7, 1.5)
    p_gamma_invert: float = 0.1

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.startswith("p_") and not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"AugmentConfig.{f.name} must be a probability in [0, 1], got {v}")
            if isinstance(v, (list, tuple)) and f.name != "flip_axes":
                if len(v) != 2 or float(v[0]) > float(v[1]):
                    raise ValueError(f"AugmentConfig.{f.name} must be a (low, high) range, got {v}")
        if any(int(a) not in (0, 1, 2) for a in self.flip_axes):
            raise ValueError(f"AugmentConfig.flip_axes must be patch axes 0, 1, 2, got {self.flip_axes}")
        if self.elastic_grid_points < 2:
            raise ValueError("AugmentConfig.elastic_grid_points must be at least 2")

    @classmethod
    def from_dict(cls, data: Optional[Dict[str, Any]]) -> "AugmentConfig":
        """From a JSON dict (lists become tuples); unknown keys raise ``ValueError`` naming them."""
        data = dict(data or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"AugmentConfig: unknown field(s) {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def to_dict(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def disabled(cls) -> "AugmentConfig":
        """Every probability 0: ``augment_batch`` returns its input unchanged."""
        return cls(**{f.name: 0.0 for f in fields(cls) if f.name.startswith("p_")})


# --------------------------------------------------------------------------
def _u(shape, gen: Optional[torch.Generator], device) -> torch.Tensor:
    if gen is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=gen, device=gen.device).to(device)


def _n(shape, gen: Optional[torch.Generator], device) -> torch.Tensor:
    if gen is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=gen, device=gen.device).to(device)


def _between(u: torch.Tensor, r: Sequence[float]) -> torch.Tensor:
    return float(r[0]) + u * (float(r[1]) - float(r[0]))


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """(N, 3) radians about the i, j, k axes -> (N, 3, 3) acting on (x, y, z) = (i, j, k) coordinates."""
    n = angles.shape[0]
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones(n, dtype=angles.dtype, device=angles.device), torch.zeros(n, dtype=angles.dtype, device=angles.device)

    def mat(rows):
        return torch.stack([torch.stack(r, -1) for r in rows], -2)

    rx = mat([[one, zero, zero], [zero, c[:, 0], -s[:, 0]], [zero, s[:, 0], c[:, 0]]])
    ry = mat([[c[:, 1], zero, s[:, 1]], [zero, one, zero], [-s[:, 1], zero, c[:, 1]]])
    rz = mat([[c[:, 2], -s[:, 2], zero], [s[:, 2], c[:, 2], zero], [zero, zero, one]])
    return rz @ ry @ rx


def _spatial(image, label, sel, theta, disp, pad_value):
    """One grid_sample over the selected samples; ``theta`` (n, 3, 4), ``disp`` (n, k, j, i, 3) or None."""
    x = image[sel]
    size = (x.shape[0], 1) + tuple(x.shape[2:])
    grid = F.affine_grid(theta.to(x.dtype), size, align_corners=False)
    if disp is not None:
        grid = grid + disp.to(grid.dtype)
    pad = x.amin(dim=(2, 3, 4), keepdim=True) if pad_value is None else torch.full_like(x[:, :, :1, :1, :1], float(pad_value))
    out_img = F.grid_sample(x - pad, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + pad
    out_lab = None
    if label is not None:
        y = label[sel]
        ch = y.dim() == 4
        yf = (y.unsqueeze(1) if ch else y).to(grid.dtype)
        yl = F.grid_sample(yf, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        out_lab = (yl.squeeze(1) if ch else yl).round().to(label.dtype)
    return out_img, out_lab


def _gauss_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of one sample (1, C, k, j, i), sigma in voxels, edges replicated."""
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    w = w / w.sum()
    c = x.shape[1]
    for ax in range(3):
        shape = [1, 1, 1]
        shape[ax] = 2 * r + 1
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - ax)] = pad[2 * (2 - ax) + 1] = r
        x = F.conv3d(F.pad(x, pad, mode="replicate"), w.view(1, 1, *shape).expand(c, 1, *shape).contiguous(), groups=c)
    return x


def augment_batch(
    image: torch.Tensor,
    label: Optional[torch.Tensor] = None,
    config: AugmentConfig = AugmentConfig(),
    generator: Optional[torch.Generator] = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    pad_value: Optional[float] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Augment a batch; returns new ``(image, label)`` of the same shapes, dtypes and device.

    ``image``: float ``(N, C, k, j, i)``; ``label``: ``(N, k, j, i)`` or
    ``(N, C', k, j, i)``, any dtype (values kept: nearest sampling), or None.
    ``spacing``: the patch's voxel size ``(k, j, i)`` mm. ``pad_value``: the
    image value outside the patch after rotation/scaling (e.g.
    ``intensity.normalised_value(-1024, stage)``); None: each sample's minimum.
    """
    if image.dim() != 5:
        raise ValueError(f"image must be (N, C, k, j, i), got shape {tuple(image.shape)}")
    if label is not None and (label.shape[0] != image.shape[0] or tuple(label.shape[-3:]) != tuple(image.shape[2:])):
        raise ValueError(f"label shape {tuple(label.shape)} does not match image shape {tuple(image.shape)}")
    n = image.shape[0]
    # one fixed block of draws, whichever transforms fire, so a seed gives one result
    fire = _u((n, 12), generator, image.device)
    par = _u((n, 12), generator, image.device)
    out_img, out_lab = _augment_spatial(image, label, config, fire, par, generator, spacing, pad_value)
    return _augment_intensity(out_img, config, fire, par, generator), out_lab


def _on(fire: torch.Tensor, col: int, p: float) -> torch.Tensor:
    """Per sample: whether the transform drawn in column ``col`` of ``fire`` fires (probability ``p``)."""
    return fire[:, col] < p


def _augment_spatial(image, label, cfg: AugmentConfig, fire, par, generator, spacing, pad_value):
    """Flips, rotation, scaling and elastic deformation, identical for image and label (see the module docstring)."""
    dev, n = image.device, image.shape[0]
    rot, scl, ela = _on(fire, 0, cfg.p_rotation), _on(fire, 1, cfg.p_scale), _on(fire, 2, cfg.p_elastic)
    flip = torch.zeros(n, 3, dtype=torch.bool, device=dev)
    for a in cfg.flip_axes:
        flip[:, int(a)] = _on(fire, 3 + int(a), cfg.p_flip)
    out_img, out_lab = image.clone(), None if label is None else label.clone()

    resample = rot | scl | ela
    for b in torch.nonzero(~resample & flip.any(1)).flatten().tolist():
        axes = [a for a in range(3) if bool(flip[b, a])]
        out_img[b] = torch.flip(image[b], [1 + a for a in axes])
        if label is not None:
            out_lab[b] = torch.flip(label[b], [label.dim() - 4 + a for a in axes])
    if bool(resample.any()):
        sel = torch.nonzero(resample).flatten()
        dims = tuple(image.shape[2:])
        half = torch.tensor([d * s / 2.0 for d, s in zip(dims[::-1], tuple(spacing)[::-1])], device=dev)  # (x, y, z) mm
        theta = _affine(cfg, sel, rot, scl, flip, par, half)
        disp = None
        if bool(ela[sel].any()):
            disp = _elastic(cfg, sel, ela, par, generator, dims, half)
        img_s, lab_s = _spatial(image, label, sel, theta, disp, pad_value)
        out_img[sel] = img_s
        if label is not None:
            out_lab[sel] = lab_s
    return out_img, out_lab


def _affine(cfg: AugmentConfig, sel, rot, scl, flip, par, half) -> torch.Tensor:
    """``affine_grid``'s ``theta`` (m, 3, 4) of the selected samples: rotation, zoom and flips, in mm."""
    dev = par.device
    m = sel.numel()
    deg = torch.tensor([cfg.rotation_other_deg, cfg.rotation_other_deg, cfg.rotation_axial_deg], device=dev)
    angles = (par[sel, 0:3] * 2 - 1) * deg * (math.pi / 180.0) * rot[sel, None]
    zoom = torch.where(scl[sel], _between(par[sel, 3], cfg.scale_range), torch.ones(m, device=dev))
    fsign = torch.where(flip[sel].flip(1), -1.0, 1.0)  # (x, y, z) = (i, j, k)
    mat = _rotation(angles).transpose(1, 2) / zoom[:, None, None]  # output mm -> input mm
    a = (mat * fsign[:, None, :]) * half[None, None, :] / half[None, :, None]
    return torch.cat([a, torch.zeros(m, 3, 1, device=dev)], 2)


def _elastic(cfg: AugmentConfig, sel, ela, par, generator, dims, half) -> torch.Tensor:
    """Smooth random displacements (m, k, j, i, 3) of the selected samples, normalised grid units."""
    dev = par.device
    m = sel.numel()
    g = int(cfg.elastic_grid_points)
    mag = _between(par[sel, 4], cfg.elastic_magnitude_mm) * ela[sel]
    ctrl = _n((m, 3, g, g, g), generator, dev) * mag[:, None, None, None, None]
    field = F.interpolate(ctrl, size=dims, mode="trilinear", align_corners=True)
    return field.permute(0, 2, 3, 4, 1) / half  # mm -> normalised, (x, y, z) order


def _augment_intensity(x, cfg: AugmentConfig, fire, par, generator) -> torch.Tensor:
    """Noise, blur, brightness, contrast, low resolution, gamma (nnU-Net's order), image only."""
    x = _noise_and_blur(x, cfg, fire, par, generator)
    x = _brightness_and_contrast(x, cfg, fire, par)
    return _lowres_and_gamma(x, cfg, fire, par)


def _noise_and_blur(x, cfg: AugmentConfig, fire, par, generator) -> torch.Tensor:
    noise = _on(fire, 6, cfg.p_noise)
    if bool(noise.any()):
        sel = torch.nonzero(noise).flatten()
        sd = _between(par[sel, 5], cfg.noise_std).to(x.dtype)
        x[sel] = x[sel] + _n((sel.numel(),) + tuple(x.shape[1:]), generator, x.device).to(x.dtype) * sd.view(-1, 1, 1, 1, 1)
    for b in torch.nonzero(_on(fire, 7, cfg.p_blur)).flatten().tolist():
        x[b:b + 1] = _gauss_blur(x[b:b + 1], float(_between(par[b, 6], cfg.blur_sigma)))
    return x


def _brightness_and_contrast(x, cfg: AugmentConfig, fire, par) -> torch.Tensor:
    bright = _on(fire, 8, cfg.p_brightness)
    if bool(bright.any()):
        f = torch.where(bright, _between(par[:, 7], cfg.brightness_range), torch.ones(x.shape[0], device=x.device))
        x = x * f.to(x.dtype).view(-1, 1, 1, 1, 1)
    contrast = _on(fire, 9, cfg.p_contrast)
    if bool(contrast.any()):
        sel = torch.nonzero(contrast).flatten()
        xs = x[sel]
        mean = xs.mean(dim=(2, 3, 4), keepdim=True)
        lo, hi = xs.amin(dim=(2, 3, 4), keepdim=True), xs.amax(dim=(2, 3, 4), keepdim=True)
        f = _between(par[sel, 8], cfg.contrast_range).to(x.dtype).view(-1, 1, 1, 1, 1)
        x[sel] = torch.maximum(torch.minimum((xs - mean) * f + mean, hi), lo)
    return x


def _lowres_and_gamma(x, cfg: AugmentConfig, fire, par) -> torch.Tensor:
    dims = tuple(x.shape[2:])
    for b in torch.nonzero(_on(fire, 10, cfg.p_lowres)).flatten().tolist():
        z = float(_between(par[b, 9], cfg.lowres_zoom))
        small = [max(1, int(round(d * z))) for d in dims]
        down = F.interpolate(x[b:b + 1], size=small, mode="nearest")
        x[b:b + 1] = F.interpolate(down, size=dims, mode="trilinear", align_corners=False)
    gamma = _between(par[:, 10], cfg.gamma_range)
    invert = par[:, 11] < cfg.p_gamma_invert
    for b in torch.nonzero(_on(fire, 11, cfg.p_gamma)).flatten().tolist():
        xb = -x[b:b + 1] if bool(invert[b]) else x[b:b + 1]
        mean, std = xb.mean(), xb.std()
        lo, hi = xb.min(), xb.max()
        rng = (hi - lo).clamp_min(1e-7)
        y = ((xb - lo) / rng) ** float(gamma[b]) * rng + lo
        y = (y - y.mean()) / y.std().clamp_min(1e-7) * std + mean  # keep mean and spread (nnU-Net retain_stats)
        x[b:b + 1] = -y if bool(invert[b]) else y
    return x
