"""Small synthetic CTs and the files the reader tests write (shared by test_volume_io, test_validate, test_cases)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from KidneyTumorSegLib.geometry.volume import Volume
from KidneyTumorSegLib.io.volume_io import volume_to_sitk

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# A rotated, non-unit grid: catches any axis swap or lost direction.
ANGLE = np.deg2rad(20)
ROTATED = (np.cos(ANGLE), -np.sin(ANGLE), 0.0, np.sin(ANGLE), np.cos(ANGLE), 0.0, 0.0, 0.0, 1.0)
KITS_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)  # KiTS19: index axis i (array axis 2) runs along z
IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0, 1)


def shared(name: str) -> Path:
    p = SHARED / name
    if not p.exists():
        pytest.skip(f"reference data {p} is absent (it sits beside the repository in ../shared/data)")
    return p


def ct_array(shape=(12, 20, 24), seed=0) -> np.ndarray:
    """int16 HU phantom [k, j, i]: air, a soft-tissue body with noise, a bone block."""
    rng = np.random.default_rng(seed)
    arr = np.full(shape, -1000, np.int16)
    k, j, i = shape
    arr[:, j // 4: 3 * j // 4, i // 4: 3 * i // 4] = 40
    arr[:, j // 2: j // 2 + 3, i // 2: i // 2 + 3] = 700
    return (arr + rng.integers(-20, 20, shape)).astype(np.int16)


def ct_volume(**kw) -> Volume:
    geo = dict(spacing=(0.8, 0.7, 2.5), origin=(-120.5, 33.25, -410.0), direction=ROTATED)
    geo.update(kw)
    return Volume(ct_array(), **geo)


def write_image(vol: Volume, path: Path) -> Path:
    sitk.WriteImage(volume_to_sitk(vol), str(path), useCompression=path.suffix != ".nii")
    return path


def write_image_sitk(img: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(img, str(path))
    return path


def write_dicom_series(folder: Path, vol: Volume, modality="CT", uid="1.2.826.0.1.3680043.2.1125.101",
                       description="test series", patient_id="KTS-1") -> Path:
    """A minimal DICOM series written by SimpleITK (GDCM), one file per slice, identity direction."""
    folder.mkdir(parents=True, exist_ok=True)
    img = volume_to_sitk(vol)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    tags = {
        "0008|0060": modality, "0020|000e": uid, "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
        "0008|103e": description, "0010|0020": patient_id, "0020|0037": "1\\0\\0\\0\\1\\0",
        "0018|0050": str(vol.spacing[2]),
    }
    for k in range(vol.shape[0]):
        sl = img[:, :, k]
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        sl.SetMetaData("0020|0032", "\\".join(f"{c:.6f}" for c in img.TransformIndexToPhysicalPoint((0, 0, k))))
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0008|0018", f"{uid}.{k + 1}")
        writer.SetFileName(str(folder / f"s{uid[-3:]}_{k:03d}.dcm"))
        writer.Execute(sl)
    return folder


def assert_same_geometry(a: Volume, b: Volume, atol=1e-5):
    assert a.shape == b.shape
    np.testing.assert_allclose(a.spacing, b.spacing, atol=atol)
    np.testing.assert_allclose(a.origin, b.origin, atol=atol)
    np.testing.assert_allclose(a.direction, b.direction, atol=atol)
