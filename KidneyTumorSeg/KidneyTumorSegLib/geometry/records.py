"""Geometric steps that record what they did and can be undone exactly.

Each step is a frozen record with ``apply`` (earlier grid -> later grid) and
``invert`` (later grid -> earlier grid) working on arrays whose last three
axes are ``(k, j, i)``; any leading axes (channels) are carried along. The
record's ``volume`` method gives the later grid's geometry, so a stage always
knows where its voxels are in the world (the exact-predictor tests rely on
that). The pipeline keeps the records and undoes them in reverse order.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .boxes import Box
from .volume import InputError, Volume

# a stage grid larger than this (4 GiB as float32) is refused before anything is allocated: a CT of
# 512 x 512 x 1000 voxels resampled to 0.7 mm is 0.4e9; a bundle spacing of 0.01 mm asked for 8e9 of a
# 12 x 20 x 24 test scan
MAX_RESAMPLED_VOXELS = 2 ** 30



# --------------------------------------------------------------------------
# Reorientation: a permutation and flips of the array axes (no interpolation)
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Reorient:
    """Array-axis permutation and flips that bring an image to canonical order.

    Canonical means: index axes ``i, j, k`` point as closely as possible to
    LPS ``+x, +y, +z`` (left, posterior, superior), so array axis 0 is the
    axial slice axis from inferior to superior.

    ``perm[n]`` is the old numpy axis that becomes numpy axis ``n``;
    ``flip[n]`` tells whether that new axis is reversed.
    """

    perm: Tuple[int, int, int]
    flip: Tuple[bool, bool, bool]
    in_shape: Tuple[int, int, int]

    @property
    def is_identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flip)

    def apply(self, arr: np.ndarray) -> np.ndarray:
        lead = arr.ndim - 3
        out = np.transpose(arr, tuple(range(lead)) + tuple(lead + p for p in self.perm))
        for n, f in enumerate(self.flip):
            if f:
                out = np.flip(out, axis=lead + n)
        return np.ascontiguousarray(out)

    def invert(self, arr: np.ndarray) -> np.ndarray:
        lead = arr.ndim - 3
        out = arr
        for n, f in enumerate(self.flip):
            if f:
                out = np.flip(out, axis=lead + n)
        inv = np.argsort(self.perm)
        out = np.transpose(out, tuple(range(lead)) + tuple(lead + int(p) for p in inv))
        return np.ascontiguousarray(out)

    def volume(self, vol: Volume, array: np.ndarray = None) -> Volume:
        """Canonical-grid volume (with ``array`` if given, else ``apply(vol.array)``)."""
        old_shape_ijk = vol.shape[::-1]
        # new numpy axis n <-> new index axis (2 - n); old numpy axis p <-> old index axis (2 - p)
        new_origin_idx = np.zeros(3)
        steps = np.zeros((3, 3))  # row m: old continuous index step for one step along new index axis m
        for n in range(3):
            old_axis = 2 - self.perm[n]
            m = 2 - n
            if self.flip[n]:
                new_origin_idx[old_axis] = old_shape_ijk[old_axis] - 1
                steps[m, old_axis] = -1.0
            else:
                steps[m, old_axis] = 1.0
        origin = vol.index_to_world(new_origin_idx)
        dirs = []
        spac = []
        for m in range(3):
            vec = vol.index_to_world(new_origin_idx + steps[m]) - origin
            length = float(np.linalg.norm(vec))
            spac.append(length)
            dirs.append(vec / length)
        direction = np.stack(dirs, axis=1)  # columns are the new index axes
        data = self.apply(vol.array) if array is None else array
        return Volume(data, spacing=tuple(spac), origin=tuple(origin), direction=tuple(direction.ravel()), meta=dict(vol.meta))


def canonical_reorient(vol: Volume) -> Reorient:
    """The permutation/flip record that makes ``vol`` canonical (see :class:`Reorient`)."""
    d = vol.direction_matrix  # d[w, a]: world axis w, index axis a (0=i,1=j,2=k)
    best = None
    for axes in itertools.permutations(range(3)):
        # axes[w] = index axis assigned to world axis w
        score = sum(abs(d[w, axes[w]]) for w in range(3))
        if best is None or score > best[0] + 1e-9:
            best = (score, axes)
    axes = best[1]
    perm = []
    flip = []
    for n in range(3):  # new numpy axis n = new index axis 2-n = world axis 2-n
        w = 2 - n
        old_index_axis = axes[w]
        perm.append(2 - old_index_axis)
        flip.append(bool(d[w, old_index_axis] < 0))
    return Reorient(tuple(perm), tuple(flip), vol.shape)


# --------------------------------------------------------------------------
# Crop (and pad where the box leaves the array)
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Crop:
    """Cut the half-open index box ``box`` out of an array of ``in_shape``.

    The box may reach outside the array; those voxels are filled on ``apply``
    (with ``fill``) and dropped on ``invert``.
    """

    box: Box
    in_shape: Tuple[int, int, int]

    @property
    def out_shape(self) -> Tuple[int, int, int]:
        return tuple(b - a for a, b in self.box)  # type: ignore[return-value]

    def _overlap(self):
        src, dst = [], []
        for (a, b), n in zip(self.box, self.in_shape):
            lo, hi = max(a, 0), min(b, n)
            if hi <= lo:
                return None
            src.append(slice(lo, hi))
            dst.append(slice(lo - a, hi - a))
        return tuple(src), tuple(dst)

    def apply(self, arr: np.ndarray, fill: float = 0) -> np.ndarray:
        lead = arr.shape[:-3]
        out = np.full(lead + self.out_shape, fill, dtype=arr.dtype)
        ov = self._overlap()
        if ov is not None:
            src, dst = ov
            out[(Ellipsis,) + dst] = arr[(Ellipsis,) + src]
        return out

    def invert(self, arr: np.ndarray, fill: float = 0) -> np.ndarray:
        lead = arr.shape[:-3]
        out = np.full(lead + tuple(self.in_shape), fill, dtype=arr.dtype)
        ov = self._overlap()
        if ov is not None:
            src, dst = ov
            out[(Ellipsis,) + src] = arr[(Ellipsis,) + dst]
        return out

    def volume(self, vol: Volume, array: np.ndarray = None, fill: float = 0) -> Volume:
        start_ijk = np.array([self.box[2][0], self.box[1][0], self.box[0][0]], dtype=float)
        origin = vol.index_to_world(start_ijk)
        data = self.apply(vol.array, fill) if array is None else array
        return vol.with_array(data, origin=tuple(origin))

    def paste(self, dst: np.ndarray, src: np.ndarray) -> None:
        """Write the non-zero voxels of ``src`` (this crop's output) into ``dst`` (its input), in place.

        Unlike :meth:`invert`, what ``dst`` holds elsewhere, and under ``src``'s zeros, stays.
        """
        ov = self._overlap()
        if ov is None:
            return
        region, part = dst[ov[0]], src[ov[1]]
        nz = part != 0
        region[nz] = part[nz]

    @classmethod
    def placed(cls, start: Sequence[int], shape: Sequence[int], in_shape: Sequence[int]) -> "Crop":
        """The crop an array of ``shape`` placed at index ``start`` of an ``in_shape`` grid was cut as."""
        return cls(tuple((int(a), int(a) + int(n)) for a, n in zip(start, shape)), tuple(in_shape))  # type: ignore[arg-type]

    @property
    def start(self) -> Tuple[int, int, int]:
        return tuple(a for a, _ in self.box)  # type: ignore[return-value]

    def inner(self, box: Box) -> "Crop":
        """The crop of ``box`` (given in this crop's output index space) as a crop of this crop's input."""
        return Crop(_shift(box, self.start, +1), self.in_shape)

    def relative_to(self, outer: "Crop") -> "Crop":
        """This crop, of the same input grid as ``outer``, as a crop of ``outer``'s output."""
        return Crop(_shift(self.box, outer.start, -1), outer.out_shape)


def _shift(box: Box, start: Sequence[int], sign: int) -> Box:
    return tuple((a + sign * o, b + sign * o) for (a, b), o in zip(box, start))  # type: ignore[return-value]


# --------------------------------------------------------------------------
# Resampling to a target spacing (axis-aligned scaling, voxel centres kept)
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Resample:
    """Scale each array axis from ``in_shape`` to ``out_shape``.

    The image's physical extent is kept (voxel corners align: torch's
    ``align_corners=False``), so the realised spacing is
    ``in_spacing * in_shape / out_shape``, which can differ slightly from the
    requested one; :meth:`volume` records the realised spacing.
    """

    in_shape: Tuple[int, int, int]
    out_shape: Tuple[int, int, int]

    @property
    def is_identity(self) -> bool:
        return tuple(self.in_shape) == tuple(self.out_shape)

    def apply(self, arr: np.ndarray, order: int = 1) -> np.ndarray:
        return _resize(arr, self.out_shape, order)

    def invert(self, arr: np.ndarray, order: int = 1) -> np.ndarray:
        return _resize(arr, self.in_shape, order)

    def volume(self, vol: Volume, array: np.ndarray = None, order: int = 1) -> Volume:
        factor_ijk = np.array(self.in_shape[::-1], float) / np.array(self.out_shape[::-1], float)
        old_sp = np.asarray(vol.spacing)
        new_sp = old_sp * factor_ijk
        # the new voxel 0 centre sits at old continuous index (factor - 1) / 2
        origin = vol.index_to_world((factor_ijk - 1.0) / 2.0)
        data = self.apply(vol.array, order) if array is None else array
        return vol.with_array(data, spacing=tuple(new_sp), origin=tuple(origin))

    def box_to_input(self, box: Box) -> Box:
        """A box on the output grid as the box that covers the same extent on the input grid (rounded outwards)."""
        factor = np.array(self.in_shape, float) / np.array(self.out_shape, float)
        return tuple((int(np.floor(a * f)), int(np.ceil(e * f))) for (a, e), f in zip(box, factor))  # type: ignore[return-value]


def resample_record(shape_zyx: Sequence[int], spacing_zyx: Sequence[float], target_zyx: Sequence[float]) -> Resample:
    """Record that brings an array of ``shape_zyx`` at ``spacing_zyx`` close to ``target_zyx`` mm.

    A target of ``None`` or ``0`` on an axis keeps that axis as it is.
    """
    out = []
    for n, s, t in zip(shape_zyx, spacing_zyx, target_zyx):
        if not t or abs(t - s) < 1e-6:
            out.append(int(n))
        else:
            out.append(max(1, int(round(n * s / t))))
    voxels = int(np.prod([float(n) for n in out]))
    if voxels > MAX_RESAMPLED_VOXELS:
        raise InputError(
            f"resampling the {'x'.join(str(int(n)) for n in shape_zyx)} scan from {_mm(spacing_zyx)} mm to the "
            f"model's {_mm(target_zyx)} mm would make {voxels:.3g} voxels ({voxels * 4 / 2**30:.0f} GB), more than "
            f"{MAX_RESAMPLED_VOXELS:.3g}: the model's spacing does not suit this scan")
    return Resample(tuple(int(n) for n in shape_zyx), tuple(out))


def _mm(values: Sequence[float]) -> str:
    return " x ".join(f"{float(v):g}" for v in values)


def _resize(arr: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """Resize the last three axes of ``arr`` to ``shape`` (order 0 nearest, 1 linear)."""
    shape = tuple(int(s) for s in shape)
    if tuple(arr.shape[-3:]) == shape:
        return arr
    lead = arr.shape[:-3]
    dtype = arr.dtype
    t = torch.from_numpy(np.ascontiguousarray(arr).reshape((-1, 1) + tuple(arr.shape[-3:])))
    if order == 0:
        if t.dtype == torch.bool:
            t = t.to(torch.uint8)
        # nearest-exact picks the input voxel whose centre is nearest, matching the geometry above
        out = F.interpolate(t if t.is_floating_point() else t.float(), size=shape, mode="nearest-exact")
        res = out.numpy().astype(dtype, copy=False)
    else:
        t = t.float() if not t.is_floating_point() or t.dtype == torch.float64 else t
        out = F.interpolate(t, size=shape, mode="trilinear", align_corners=False)
        res = out.numpy()
        if np.issubdtype(dtype, np.floating):
            res = res.astype(dtype, copy=False)
    return res.reshape(lead + shape)
