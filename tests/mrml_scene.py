"""The MRML scene the Slicer-layer tests share (test_slicer_mrml*.py), on Slicer's real MRML classes from
`slicer-core` (PyPI, no application): the segmentation converters, a volume under a rotated parent transform,
an empty segmentation, and a segment's voxels read back in world coordinates."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) is not installed")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed `slicer` module has no MRML classes", allow_module_level=True)
vtk = pytest.importorskip("vtk")

from AIAASegmentLib import ijk_to_world  # noqa: E402
from AIAASegmentSlicer import mrml_bridge  # noqa: E402

SHAPE_KJI = (6, 7, 8)  # Slicer arrays are [k, j, i]; the volume is 8 × 7 × 6 voxels (i, j, k)


@pytest.fixture(scope="module", autouse=True)
def segmentation_converters():
    """What the Segmentations module registers at application startup."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


def linear_transform(scene, matrix: np.ndarray):
    node = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(node)
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    return node


def rigid(degrees: float, axis: int, shift) -> np.ndarray:
    a = np.radians(degrees)
    m = np.eye(4)
    i, j = [n for n in range(3) if n != axis]
    m[[i, i, j, j], [i, j, i, j]] = [np.cos(a), -np.sin(a), np.sin(a), np.cos(a)]
    m[:3, 3] = shift
    return m


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture
def volume_node(scene):
    """An LPS-like volume (IJK→RAS flips i and j), 2×2.5×3 mm, under a rotated and moved parent transform."""
    node = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(node)
    voxels = np.arange(np.prod(SHAPE_KJI), dtype=np.int16).reshape(SHAPE_KJI)
    slicer.util.updateVolumeFromArray(node, voxels)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(
        np.array([[-2.0, 0, 0, 30], [0, -2.5, 0, 40], [0, 0, 3.0, -50], [0, 0, 0, 1]])
    ))
    node.SetAndObserveTransformNodeID(linear_transform(scene, rigid(25, 2, [15, -10, 5])).GetID())
    return node


@pytest.fixture
def segmentation(scene):
    """A segmentation holding one empty segment, 'target'."""
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    node.GetSegmentation().AddEmptySegment("target", "target")
    return node


def world_voxels(segmentation_node, segment_id: str) -> np.ndarray:
    """World positions of the segment's voxels, read back from Slicer's own representation."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    image = segment.GetRepresentation("Binary labelmap")
    extent = image.GetExtent()
    dims = [extent[2 * n + 1] - extent[2 * n] + 1 for n in range(3)]
    from vtk.util.numpy_support import vtk_to_numpy

    values = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])
    kji = np.argwhere(values == segment.GetLabelValue())
    ijk = kji[:, ::-1] + [extent[0], extent[2], extent[4]]
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    to_world = mrml_bridge.to_world_matrix(segmentation_node)
    full = slicer.util.arrayFromVTKMatrix(matrix)
    if to_world is not None:
        full = to_world @ full
    return np.round(ijk_to_world(ijk, full), 3)
