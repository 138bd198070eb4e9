"""The one image type the core passes around.

Axis conventions (where CT code usually breaks):

* ``Volume.array`` is indexed ``[k, j, i]`` (slice, row, column), the order
  ``SimpleITK.GetArrayFromImage`` returns.
* ``spacing`` and ``origin`` are in physical ``(x, y, z)`` order, millimetres,
  in ITK's LPS world (x to the patient's left, y posterior, z superior).
* ``direction`` is ITK's 3x3 direction matrix, row-major, whose *columns* are
  the world directions of the index axes ``i, j, k``.

So the world (LPS) position of voxel ``array[k, j, i]`` is
``origin + direction @ (spacing * (i, j, k))``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

import numpy as np

Vec3 = Tuple[float, float, float]


class InputError(ValueError):
    """Input the pipeline cannot use; the message is shown to the user as is."""


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image with its geometry. See the module docstring for axis order."""

    array: np.ndarray
    spacing: Vec3 = (1.0, 1.0, 1.0)
    origin: Vec3 = (0.0, 0.0, 0.0)
    direction: Tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise InputError(
                f"expected a 3D image, got an array with {self.array.ndim} dimension(s) "
                f"of shape {tuple(self.array.shape)}"
            )
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        object.__setattr__(self, "direction", tuple(float(d) for d in np.asarray(self.direction).ravel()))
        if len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise InputError("geometry must have 3 spacings, 3 origin coordinates and a 3x3 direction")
        if not all(np.isfinite(self.spacing)) or min(self.spacing) <= 0:
            raise InputError(f"voxel spacing must be positive and finite, got {self.spacing}")

    # -- geometry helpers -------------------------------------------------
    @property
    def shape(self) -> Tuple[int, int, int]:
        """Array shape ``(k, j, i)``."""
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing_zyx(self) -> Vec3:
        """Spacing in array order ``(k, j, i)``."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def index_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous index ``(..., 3)`` in ``(i, j, k)`` order to LPS mm."""
        ijk = np.asarray(ijk, dtype=float)
        return np.asarray(self.origin) + (ijk * np.asarray(self.spacing)) @ self.direction_matrix.T

    def world_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """LPS mm ``(..., 3)`` to continuous index in ``(i, j, k)`` order."""
        xyz = np.asarray(xyz, dtype=float) - np.asarray(self.origin)
        return (xyz @ np.linalg.inv(self.direction_matrix).T) / np.asarray(self.spacing)

    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def with_array(self, array: np.ndarray, **changes: Any) -> "Volume":
        """Same geometry (unless changed), new voxels."""
        kw = dict(spacing=self.spacing, origin=self.origin, direction=self.direction, meta=dict(self.meta))
        kw.update(changes)
        return Volume(array, **kw)

    def same_grid(self, other: "Volume", tol: float = 1e-5) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )


@dataclass(frozen=True)
class RoiWorld:
    """An axis-aligned box in LPS mm that replaces stage 1 (e.g. a Slicer markups ROI)."""

    lo: Vec3
    hi: Vec3
