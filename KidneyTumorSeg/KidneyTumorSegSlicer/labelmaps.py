"""A segment's voxels as a numpy array on a volume's grid, read and written without touching the scene.

``slicer.util.arrayFromSegmentBinaryLabelmap`` and ``updateSegmentBinaryLabelmapFromArray`` go
through a temporary label map volume node, and each call leaves that node's display node in the
scene: one candidate edit left several nodes behind (found on slicer-core's real classes). These
work on ``vtkOrientedImageData`` only, the way the Segment Editor does, so the scene is unchanged
except for the edited segment.
"""
from __future__ import annotations

import vtk

import slicer


def _geometryOf(volumeNode):
    """An empty vtkOrientedImageData with ``volumeNode``'s extent and IJK-to-RAS (in its parent frame)."""
    geometry = slicer.vtkOrientedImageData()
    geometry.SetExtent(volumeNode.GetImageData().GetExtent())
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    geometry.SetImageToWorldMatrix(ijkToRas)
    return geometry


def _transformBetween(source, target):
    """The transform from ``source``'s parent frame to ``target``'s, or None when both share one."""
    sourceParent, targetParent = source.GetParentTransformNode(), target.GetParentTransformNode()
    if sourceParent is targetParent:
        return None
    transform = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(sourceParent, targetParent, transform)
    return transform


def segmentArray(segmentationNode, segmentId: str, referenceVolumeNode):
    """Segment ``segmentId`` as a uint8 array [k, j, i] (1 inside) on ``referenceVolumeNode``'s grid."""
    import numpy as np
    from vtk.util import numpy_support

    labelmap = slicer.vtkOrientedImageData()
    if not segmentationNode.GetBinaryLabelmapRepresentation(segmentId, labelmap):
        raise RuntimeError(f"Segment {segmentId} has no binary labelmap.")
    geometry = _geometryOf(referenceVolumeNode)
    lo = np.array(geometry.GetExtent()[::2])
    out = np.zeros(tuple(int(n) for n in (np.array(geometry.GetExtent()[1::2]) - lo + 1)[::-1]), np.uint8)
    if labelmap.IsEmpty():
        return out
    resampled = slicer.vtkOrientedImageData()
    transform = _transformBetween(segmentationNode, referenceVolumeNode)
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            labelmap, geometry, resampled, False, False, transform):
        raise RuntimeError(f"Segment {segmentId} could not be resampled.")
    extent = resampled.GetExtent()
    if resampled.IsEmpty():
        return out
    values = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars())
    shape = tuple(extent[2 * a + 1] - extent[2 * a] + 1 for a in (2, 1, 0))
    values = values.reshape(shape)
    # the part of the resampled extent inside the reference extent
    start = np.maximum(np.array(extent[::2]), lo)
    stop = np.minimum(np.array(extent[1::2]), np.array(geometry.GetExtent()[1::2])) + 1
    if np.any(stop <= start):
        return out
    target = tuple(slice(int(a - o), int(b - o)) for a, b, o in zip(start[::-1], stop[::-1], lo[::-1]))
    source = tuple(slice(int(a - e), int(b - e)) for a, b, e in zip(start[::-1], stop[::-1], np.array(extent[::2])[::-1]))
    out[target] = values[source] > 0
    return out


def setSegmentArray(array, segmentationNode, segmentId: str, referenceVolumeNode) -> None:
    """Make segment ``segmentId`` the non-zero voxels of ``array`` [k, j, i] on ``referenceVolumeNode``'s grid.

    Other segments that share the segment's labelmap layer lose the voxels it gains: write the
    segments that shrink first.
    """
    import numpy as np
    from vtk.util import numpy_support

    image = _geometryOf(referenceVolumeNode)
    voxels = np.ascontiguousarray((np.asarray(array) > 0).astype(np.uint8))
    scalars = numpy_support.numpy_to_vtk(voxels.ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(scalars)
    transform = _transformBetween(referenceVolumeNode, segmentationNode)
    if transform is not None:
        slicer.vtkOrientedImageDataResample.TransformOrientedImage(image, transform)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(image, segmentationNode, segmentId, logic.MODE_REPLACE, image.GetExtent()):
        raise RuntimeError(f"Segment {segmentId} could not be updated.")
