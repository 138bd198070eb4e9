"""Geometric records must be undone exactly and keep world coordinates right."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from KidneyTumorSegLib.geometry.boxes import box_from_mask, expand_box
from KidneyTumorSegLib.geometry.records import Crop, Resample, canonical_reorient, resample_record
from KidneyTumorSegLib.geometry.volume import InputError, Volume

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _signed_perm_directions():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            d = np.zeros((3, 3))
            for col, row in enumerate(perm):
                d[row, col] = signs[col]
            yield d


def _random_volume(direction, shape=(5, 6, 7), seed=0):
    rng = np.random.default_rng(seed)
    return Volume(
        rng.integers(-1000, 1000, size=shape).astype(np.int16),
        spacing=(0.7, 0.8, 2.5),
        origin=(-12.0, 30.0, 100.5),
        direction=tuple(np.asarray(direction).ravel()),
    )


@pytest.mark.parametrize("direction", list(_signed_perm_directions()))
def test_reorient_is_exact_and_keeps_world_positions(direction):
    vol = _random_volume(direction)
    rec = canonical_reorient(vol)
    can = rec.volume(vol)
    # canonical: direction is the identity for signed permutations
    np.testing.assert_allclose(can.direction_matrix, np.eye(3), atol=1e-12)
    assert rec.invert(can.array).tobytes() == vol.array.tobytes()
    # every voxel keeps its value at the same world position
    rng = np.random.default_rng(1)
    for _ in range(20):
        k, j, i = (int(rng.integers(0, n)) for n in can.shape)
        world = can.index_to_world([i, j, k])
        oi, oj, ok = np.rint(vol.world_to_index(world)).astype(int)
        assert vol.array[ok, oj, oi] == can.array[k, j, i]


def test_reorient_kits19_geometry_axis0_is_superior():
    path = SHARED / "kits19-labels" / "case_00000.nii.gz"
    if not path.exists():
        pytest.skip("../shared/data/kits19-labels is absent (only in the development workspace)")
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    vol = Volume(sitk.GetArrayFromImage(img), img.GetSpacing(), img.GetOrigin(), img.GetDirection())
    rec = canonical_reorient(vol)
    can = rec.volume(vol)
    np.testing.assert_allclose(can.direction_matrix, np.eye(3), atol=1e-9)
    # KiTS19 stores slices on the first array axis with 0.5 mm spacing for this case
    assert can.spacing[2] == pytest.approx(0.5)
    assert can.shape == (611, 512, 512)
    assert np.array_equal(rec.invert(can.array), vol.array)


def test_crop_inverts_and_pads_outside():
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    rec = Crop(((-2, 3), (1, 4), (4, 9)), arr.shape)
    out = rec.apply(arr, fill=-1024)
    assert out.shape == (5, 3, 5)
    assert (out[:2] == -1024).all() and (out[:, :, 2:] == -1024).all()
    assert np.array_equal(out[2:, :, :2], arr[0:3, 1:4, 4:6])
    back = rec.invert(out, fill=7)
    assert np.array_equal(back[0:3, 1:4, 4:6], arr[0:3, 1:4, 4:6])
    assert (back[3] == 7).all()


def test_crop_volume_origin_follows_direction():
    vol = _random_volume(np.diag([-1.0, 1.0, -1.0]))
    rec = Crop(((1, 3), (2, 5), (3, 6)), vol.shape)
    sub = rec.volume(vol)
    np.testing.assert_allclose(sub.index_to_world([0, 0, 0]), vol.index_to_world([3, 2, 1]))
    assert sub.array[0, 0, 0] == vol.array[1, 2, 3]


def test_resample_geometry_keeps_extent_and_centres():
    vol = _random_volume(np.eye(3), shape=(10, 20, 30)).with_array(np.zeros((10, 20, 30), np.float32))
    rec = resample_record(vol.shape, vol.spacing_zyx, (5.0, 1.6, 1.4))
    assert rec.out_shape == (5, 10, 15)
    out = rec.volume(vol)
    np.testing.assert_allclose(out.spacing, (1.4, 1.6, 5.0))
    # the physical extent (outer voxel corners) is unchanged
    lo_old = vol.index_to_world([-0.5, -0.5, -0.5])
    lo_new = out.index_to_world([-0.5, -0.5, -0.5])
    hi_old = vol.index_to_world(np.array(vol.shape[::-1]) - 0.5)
    hi_new = out.index_to_world(np.array(out.shape[::-1]) - 0.5)
    np.testing.assert_allclose(lo_old, lo_new, atol=1e-9)
    np.testing.assert_allclose(hi_old, hi_new, atol=1e-9)


def test_resample_linear_ramp_is_exact_in_world():
    # a linear function of world position survives linear resampling exactly (away from the border)
    vol = Volume(np.zeros((12, 16, 20), np.float32), spacing=(0.8, 0.9, 2.0), origin=(3.0, -4.0, 10.0))
    k, j, i = np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij")
    world = vol.index_to_world(np.stack([i, j, k], -1))
    ramp = (world @ np.array([0.3, -0.2, 0.5])).astype(np.float32)
    rec = resample_record(vol.shape, vol.spacing_zyx, (3.0, 1.2, 1.6))
    out = rec.volume(vol.with_array(ramp))
    k2, j2, i2 = np.meshgrid(*[np.arange(n) for n in out.shape], indexing="ij")
    world2 = out.index_to_world(np.stack([i2, j2, k2], -1))
    expect = world2 @ np.array([0.3, -0.2, 0.5])
    inner = (slice(1, -1),) * 3
    np.testing.assert_allclose(out.array[inner], expect[inner], atol=1e-3)


def test_nearest_resample_round_trip_identity_on_integer_factor():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 3, size=(4, 6, 8)).astype(np.uint8)
    rec = Resample((4, 6, 8), (8, 12, 16))
    up = rec.apply(lab, order=0)
    assert up.dtype == np.uint8
    assert np.array_equal(rec.invert(up, order=0), lab)


def test_box_helpers():
    m = np.zeros((10, 10, 10), bool)
    m[2:4, 5:9, 1] = True
    assert box_from_mask(m) == ((2, 4), (5, 9), (1, 2))
    assert expand_box(((2, 4), (5, 9), (1, 2)), (1, 2, 3), shape=(10, 10, 10)) == ((1, 5), (3, 10), (0, 5))
    with pytest.raises(ValueError):
        box_from_mask(np.zeros((2, 2, 2)))


def test_volume_rejects_2d_and_bad_spacing():
    with pytest.raises(InputError, match="expected a 3D image"):
        Volume(np.zeros((4, 4)))
    with pytest.raises(InputError, match="spacing must be positive"):
        Volume(np.zeros((2, 2, 2)), spacing=(1.0, 0.0, 1.0))


def test_a_stage_grid_too_large_to_allocate_is_refused_before_any_allocation():
    import pytest

    from KidneyTumorSegLib.geometry.records import resample_record
    from KidneyTumorSegLib.geometry.volume import InputError

    with pytest.raises(InputError) as caught:
        resample_record((12, 20, 24), (2.0, 2.0, 2.0), (0.01, 0.01, 0.01))
    assert str(caught.value) == ("resampling the 12x20x24 scan from 2 x 2 x 2 mm to the model's 0.01 x 0.01 x 0.01 mm "
                                 "would make 4.61e+10 voxels (172 GB), more than 1.07e+09: the model's spacing does "
                                 "not suit this scan")
    assert resample_record((512, 512, 1000), (0.7, 0.7, 1.0), (0.7, 0.7, 0.8)).out_shape == (512, 512, 1250)
