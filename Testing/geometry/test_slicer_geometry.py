"""Slicer (RAS, IJK->RAS matrix) <-> core (LPS Volume) geometry, checked against real VTK objects."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from KidneyTumorSegLib.geometry.records import canonical_reorient
from KidneyTumorSegLib.geometry.slicer_geometry import ijk_to_ras_from_volume, ras_to_lps, roi_from_slicer, volume_from_slicer
from KidneyTumorSegLib.geometry.volume import InputError, Volume

vtk = pytest.importorskip("vtk")
from vtk.util import numpy_support  # noqa: E402

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _rotation(axis, degrees):
    t = vtk.vtkTransform()
    t.RotateWXYZ(degrees, *axis)
    m = t.GetMatrix()
    return np.array([[m.GetElement(r, c) for c in range(3)] for r in range(3)])


def _vtk_matrix(a):
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r][c]))
    return m


def _numpy_matrix(m):
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _image_data(array_kji, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    """vtkImageData holding ``array_kji`` (i varies fastest in VTK's point order)."""
    img = vtk.vtkImageData()
    k, j, i = array_kji.shape
    img.SetDimensions(i, j, k)
    img.SetSpacing(*spacing)
    img.SetOrigin(*origin)
    if direction is not None:
        img.SetDirectionMatrix(*np.asarray(direction, float).ravel())
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(array_kji).ravel(), deep=True)
    img.GetPointData().SetScalars(scalars)
    return img


def _array_of(img):
    """What slicer.util.arrayFromVolume does: the scalars as [k, j, i]."""
    i, j, k = img.GetDimensions()
    return numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(k, j, i)


# an oblique, flipped, permuted frame with anisotropic spacing: nothing cancels by accident
DIRECTION_RAS = _rotation((1.0, 2.0, 0.5), 23.0) @ np.array([[0, 0, -1], [-1, 0, 0], [0, 1, 0]], float)
SPACING = (0.7, 0.8, 2.5)
ORIGIN_RAS = (112.5, -37.25, -410.0)


@pytest.fixture
def mrml_style():
    """Image data with origin 0 / spacing 1 and the whole geometry in an IJK->RAS vtkMatrix4x4, as MRML stores it."""
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 1000, size=(5, 6, 7)).astype(np.int16)
    img = _image_data(arr)
    m = np.eye(4)
    m[:3, :3] = DIRECTION_RAS * np.asarray(SPACING)
    m[:3, 3] = ORIGIN_RAS
    return arr, img, _vtk_matrix(m)


def test_voxel_positions_match_vtk_ijk_to_ras(mrml_style):
    arr, img, ijk_to_ras = mrml_style
    vol = volume_from_slicer(_array_of(img), _numpy_matrix(ijk_to_ras))
    assert vol.shape == (5, 6, 7)
    assert vol.spacing == pytest.approx(SPACING, abs=1e-12)
    for ijk in [(0, 0, 0), (6, 0, 0), (0, 5, 0), (0, 0, 4), (3, 2, 1), (6, 5, 4), (2.5, 1.25, 3.75)]:
        ras = ijk_to_ras.MultiplyPoint((*ijk, 1.0))[:3]
        assert ras_to_lps(vol.index_to_world(ijk)) == pytest.approx(ras, abs=1e-9)
        if all(float(v).is_integer() for v in ijk):
            i, j, k = (int(v) for v in ijk)
            # the voxel VTK stores at (i, j, k) is array[k, j, i] in the Volume
            assert vol.array[k, j, i] == img.GetScalarComponentAsDouble(i, j, k, 0)
    assert np.array_equal(vol.array, arr)


def test_round_trip_ijk_to_ras_volume_ijk_to_ras(mrml_style):
    _, img, ijk_to_ras = mrml_style
    m = _numpy_matrix(ijk_to_ras)
    vol = volume_from_slicer(_array_of(img), m)
    back = ijk_to_ras_from_volume(vol)
    assert np.allclose(back, m, rtol=0, atol=1e-12)
    vol2 = volume_from_slicer(vol.array, back)
    assert vol2.same_grid(vol, tol=1e-12)
    # and Volume -> matrix -> Volume from the other side
    lps = Volume(np.zeros((2, 3, 4)), spacing=(0.5, 1.5, 3.0), origin=(-10.0, 20.0, 30.0),
                 direction=tuple((_rotation((0.3, -1.0, 0.2), 71.0)).ravel()))
    assert volume_from_slicer(lps.array, ijk_to_ras_from_volume(lps)).same_grid(lps, tol=1e-12)


def test_vtk_image_data_direction_matrix_path():
    """VTK's own oriented image data: its index-to-physical matrix is an IJK->RAS matrix for Slicer."""
    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    img = _image_data(arr, spacing=SPACING, origin=ORIGIN_RAS, direction=DIRECTION_RAS)
    m = _numpy_matrix(img.GetIndexToPhysicalMatrix())
    vol = volume_from_slicer(_array_of(img), m)
    assert vol.spacing == pytest.approx(img.GetSpacing(), abs=1e-12)
    assert ras_to_lps(vol.origin) == pytest.approx(img.GetOrigin(), abs=1e-12)
    for ijk in [(0, 0, 0), (5, 4, 3), (1, 2, 3), (0.5, 3.5, 2.25)]:
        physical = [0.0, 0.0, 0.0]
        img.TransformContinuousIndexToPhysicalPoint(ijk, physical)
        assert ras_to_lps(vol.index_to_world(ijk)) == pytest.approx(physical, abs=1e-9)
        assert vol.world_to_index(ras_to_lps(physical)) == pytest.approx(ijk, abs=1e-9)
    # direction columns are the index axes' directions: negate R and A rows to get RAS back
    assert np.allclose(vol.direction_matrix * np.array([-1, -1, 1])[:, None], DIRECTION_RAS, atol=1e-12)


def test_ras_and_lps_signs():
    # identity IJK->RAS: i runs to the patient's right (+R), which is -x in LPS
    m = np.eye(4)
    m[:3, 3] = (10.0, 20.0, 30.0)
    vol = volume_from_slicer(np.zeros((2, 2, 2)), m)
    assert vol.origin == (-10.0, -20.0, 30.0)
    assert np.array_equal(vol.direction_matrix, np.diag([-1.0, -1.0, 1.0]))
    assert vol.index_to_world((1, 1, 1)) == pytest.approx((-11.0, -21.0, 31.0))
    assert ras_to_lps((1.0, 2.0, 3.0)).tolist() == [-1.0, -2.0, 3.0]
    assert ras_to_lps([[1.0, 2.0, 3.0], [-4.0, 5.0, -6.0]]).tolist() == [[-1.0, -2.0, 3.0], [4.0, -5.0, -6.0]]
    with pytest.raises(ValueError):
        ras_to_lps([1.0, 2.0])


def test_ras_to_lps_matches_a_vtk_transform():
    t = vtk.vtkTransform()
    t.Scale(-1.0, -1.0, 1.0)
    pts = np.random.default_rng(1).normal(0, 100, size=(20, 3))
    expected = np.array([t.TransformPoint(p) for p in pts])
    assert np.allclose(ras_to_lps(pts), expected, atol=1e-12)
    assert np.allclose(ras_to_lps(pts), expected, atol=1e-12)
    assert np.allclose(ras_to_lps(pts[0]), t.TransformPoint(pts[0]), atol=1e-12)
    assert np.allclose(ras_to_lps(ras_to_lps(pts)), pts, atol=0)


def test_bad_matrices_are_refused():
    with pytest.raises(InputError, match="4x4"):
        volume_from_slicer(np.zeros((2, 2, 2)), np.eye(3))
    singular = np.eye(4)
    singular[:3, 2] = 0.0
    with pytest.raises(InputError, match="zero-length"):
        volume_from_slicer(np.zeros((2, 2, 2)), singular)
    flat = np.eye(4)
    flat[:3, 2] = (1.0, 0.0, 0.0)
    with pytest.raises(InputError, match="singular"):
        volume_from_slicer(np.zeros((2, 2, 2)), flat)
    projective = np.eye(4)
    projective[3, 0] = 0.1
    with pytest.raises(InputError, match="not affine"):
        volume_from_slicer(np.zeros((2, 2, 2)), projective)


def test_kits19_geometry_through_a_slicer_matrix():
    label_path = SHARED / "kits19-labels" / "case_00000.nii.gz"
    if not label_path.exists():
        pytest.skip(f"KiTS19 label not available at {label_path}")
    sitk = pytest.importorskip("SimpleITK")
    from KidneyTumorSegLib.io.volume_io import sitk_to_volume

    img = sitk.ReadImage(str(label_path))
    ref = sitk_to_volume(img)
    # what Slicer's ITK-based reader does: LPS direction/origin turned to RAS, spacing into the columns
    d_lps = np.asarray(img.GetDirection()).reshape(3, 3)
    flip = np.diag([-1.0, -1.0, 1.0])
    m = np.eye(4)
    m[:3, :3] = flip @ d_lps @ np.diag(img.GetSpacing())
    m[:3, 3] = flip @ np.asarray(img.GetOrigin())
    ijk_to_ras = _vtk_matrix(m)
    vol = volume_from_slicer(sitk.GetArrayFromImage(img), _numpy_matrix(ijk_to_ras))
    assert vol.same_grid(ref, tol=1e-9)
    size = img.GetSize()
    for ijk in [(0, 0, 0), (size[0] - 1, size[1] - 1, size[2] - 1), (17, 250, 301)]:
        ras = ijk_to_ras.MultiplyPoint((*ijk, 1.0))[:3]
        assert ras_to_lps(ras) == pytest.approx(img.TransformIndexToPhysicalPoint(ijk), abs=1e-6)
    assert np.allclose(ijk_to_ras_from_volume(vol), m, rtol=0, atol=1e-9)
    # KiTS19 stores slices first with a swapping affine; the cascade's canonical view must not care where it came from
    r_slicer, r_sitk = canonical_reorient(vol), canonical_reorient(ref)
    assert (r_slicer.perm, r_slicer.flip) == (r_sitk.perm, r_sitk.flip)
    assert not r_sitk.is_identity
    can_slicer, can_sitk = r_slicer.volume(vol), r_sitk.volume(ref)
    assert can_slicer.same_grid(can_sitk, tol=1e-9)
    assert np.array_equal(can_slicer.array, can_sitk.array)


def test_axis_aligned_roi_to_lps_box():
    roi = roi_from_slicer((10.0, 20.0, 30.0), (40.0, 50.0, 60.0))
    # RAS x in [-10, 30] -> LPS x in [-30, 10]; RAS y in [-5, 45] -> LPS y in [-45, 5]
    assert roi.lo == pytest.approx((-30.0, -45.0, 0.0))
    assert roi.hi == pytest.approx((10.0, 5.0, 60.0))


def test_rotated_roi_box_holds_its_corners_like_vtk_bounds():
    centre, size = np.array([15.0, -40.0, 120.0]), np.array([60.0, 30.0, 90.0])
    t = vtk.vtkTransform()  # the ROI's object-to-world transform
    t.Translate(*centre)
    t.RotateWXYZ(33.0, 0.2, 1.0, 0.4)
    cube = vtk.vtkCubeSource()
    cube.SetXLength(size[0])
    cube.SetYLength(size[1])
    cube.SetZLength(size[2])
    cube.SetOutputPointsPrecision(vtk.vtkAlgorithm.DOUBLE_PRECISION)
    moved = vtk.vtkTransformFilter()
    moved.SetOutputPointsPrecision(vtk.vtkAlgorithm.DOUBLE_PRECISION)
    moved.SetInputConnection(cube.GetOutputPort())
    moved.SetTransform(t)
    moved.Update()
    b = moved.GetOutput().GetBounds()  # RAS (xmin, xmax, ymin, ymax, zmin, zmax)
    axes = _numpy_matrix(t.GetMatrix())[:3, :3]
    roi = roi_from_slicer(centre, size, axes)
    assert roi.lo == pytest.approx((-b[1], -b[3], b[4]), abs=1e-9)
    assert roi.hi == pytest.approx((-b[0], -b[2], b[5]), abs=1e-9)
    # the rotated box is larger than the unrotated one
    plain = roi_from_slicer(centre, size)
    assert np.all(np.asarray(roi.hi) - roi.lo >= np.asarray(plain.hi) - plain.lo - 1e-9)
    with pytest.raises(InputError, match="positive size"):
        roi_from_slicer(centre, (0.0, 1.0, 1.0))
