"""Geometry on Slicer's real MRML classes (slicer-core): a CT's IJK-to-RAS from its file, the export the
background run reads, an ROI under linear and non-linear transforms, segments read and written through a
transform. Stand-ins (Qt, the application) are in slicer_harness.py, fixtures in mrml_fixtures.py.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import SimpleITK as sitk

from mrml_fixtures import SKIP_WITHOUT_SLICER_CORE, ijk_to_ras, load_results, matrix_of, rotation

pytestmark = SKIP_WITHOUT_SLICER_CORE


GEOMETRIES = {
    "axial, anisotropic": (np.eye(3), (0.7, 0.8, 5.0)),
    "oblique": (rotation(0, 20) @ rotation(2, -35), (1.0, 1.5, 2.5)),
    "flipped axes": (np.diag([1.0, -1.0, -1.0]), (0.9, 0.9, 3.0)),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_a_ct_loads_with_its_file_geometry_and_exports_back_exactly(harness, slicer, tmp_path, name):
    direction, spacing = GEOMETRIES[name]
    voxels = np.random.default_rng(0).integers(-1000, 1500, (12, 20, 24)).astype(np.int16)
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing(spacing)
    image.SetDirection(tuple(direction.ravel()))
    image.SetOrigin((-120.5, 80.25, -300.0))
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(image, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    node = slicer.util.loadVolume(str(path))

    matrix = slicer.util.arrayFromVTKMatrix(matrix_of(node.GetIJKToRASMatrix))
    np.testing.assert_allclose(matrix, ijk_to_ras(image), atol=1e-5)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), voxels)

    before = harness.nodes()
    exported = tmp_path / "export" / "input.nrrd"
    exported.parent.mkdir()
    harness.module.runs.exportVolume(node, exported)  # what the background run reads
    back = sitk.ReadImage(str(exported))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), voxels)
    np.testing.assert_allclose(back.GetSpacing(), spacing, atol=1e-9)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-9)
    assert harness.nodes() == before, "exporting adds nothing to the scene"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, "the input file is not touched"


def test_roi_under_a_linear_transform_is_given_in_the_volumes_own_frame(harness, slicer):
    import vtk

    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    to_parent = np.eye(4)
    to_parent[:3, :3] = rotation(2, 90)
    to_parent[:3, 3] = (10.0, -20.0, 30.0)
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(to_parent))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "kidneys")
    roi.SetCenter(15.0, 25.0, -40.0)
    roi.SetSize(40.0, 60.0, 80.0)
    box = harness.module.runs.roiInVolumeFrame(roi, volume)
    # the ROI's corners (world RAS) taken back into the volume's frame, then to LPS
    corners = np.array([[15.0 + sx * 20.0, 25.0 + sy * 30.0, -40.0 + sz * 40.0, 1.0]
                        for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    local = (np.linalg.inv(to_parent) @ corners.T).T[:, :3] * np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(box.lo, local.min(axis=0), atol=1e-6)
    np.testing.assert_allclose(box.hi, local.max(axis=0), atol=1e-6)
    # an ROI moved with the volume is, in the volume's frame, the box it was drawn as
    roi.SetAndObserveTransformNodeID(transform.GetID())
    box = harness.module.runs.roiInVolumeFrame(roi, volume)
    np.testing.assert_allclose(box.lo, [-35.0, -55.0, -80.0], atol=1e-6)  # RAS (15, 25, -40) +- half size, in LPS
    np.testing.assert_allclose(box.hi, [5.0, 5.0, 0.0], atol=1e-6)
    # a non-linear transform is refused with the module's message
    grid = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    displacement = vtk.vtkImageData()
    displacement.SetDimensions(4, 4, 4)
    displacement.AllocateScalars(vtk.VTK_DOUBLE, 3)
    grid.GetTransformFromParentAs("vtkOrientedGridTransform").SetDisplacementGridData(displacement)
    volume.SetAndObserveTransformNodeID(grid.GetID())
    assert not grid.IsTransformToWorldLinear()
    with pytest.raises(ValueError, match="non-linear transform: harden it first"):
        harness.module.runs.roiInVolumeFrame(roi, volume)


def test_segment_arrays_follow_a_transform_between_segmentation_and_volume(harness, slicer, core_run, tmp_path):
    volume, run = load_results(harness, slicer, core_run, tmp_path)
    segmentation = run.segmentationNode
    labelmaps = harness.helper("labelmaps")
    tumor = labelmaps.segmentArray(segmentation, "kidney_tumor", volume)
    # move the segmentation by exactly two voxels along the CT's i axis (an oblique direction in RAS)
    ijk_to_ras = slicer.util.arrayFromVTKMatrix(matrix_of(volume.GetIJKToRASMatrix))
    shift = np.eye(4)
    shift[:3, 3] = 2 * ijk_to_ras[:3, 0]
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    segmentation.SetAndObserveTransformNodeID(transform.GetID())
    moved = labelmaps.segmentArray(segmentation, "kidney_tumor", volume)
    expected = np.zeros_like(tumor)
    expected[:, :, 2:] = tumor[:, :, :-2]
    np.testing.assert_array_equal(moved, expected)
    # written on the volume's grid, read back the same through the transform
    labelmaps.setSegmentArray(tumor, segmentation, "kidney_tumor", volume)
    np.testing.assert_array_equal(labelmaps.segmentArray(segmentation, "kidney_tumor", volume), tumor)
