"""MRML nodes ↔ the core's plain data: export a volume, read clicks in world coordinates, write masks into
segments. Uses only MRML/VTK classes (no Qt), so it runs under `slicer-core` outside the application."""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from AIAASegmentLib import BadInput, Volume, compact_labels, matrix_in_frame, refuse_sheared, world_matrix


def to_world_matrix(node) -> np.ndarray | None:
    """The node's parent transforms as a 4×4 to world; None when it has none."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return None
    if not parent.IsTransformToWorldLinear():
        raise BadInput(
            f"'{node.GetName()}' sits under a warping (non-linear) transform. Harden the transform "
            "(Transforms module) before using AIAA."
        )
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def volume_from_node(volume_node) -> Volume:
    """The volume as the server will get it: a copy of its voxels ([i, j, k]), its IJK→RAS, its parents."""
    if volume_node is None or volume_node.GetImageData() is None:
        raise BadInput("Select a volume (a loaded image) first.")
    if volume_node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise BadInput(f"'{volume_node.GetName()}' is a colour image; AIAA models need a grayscale volume.")
    ijk_to_ras = _ijk_to_ras(volume_node)
    refuse_sheared(ijk_to_ras, f"'{volume_node.GetName()}'")
    parent = to_world_matrix(volume_node)
    voxels = np.array(slicer.util.arrayFromVolume(volume_node)).T  # [k, j, i] → [i, j, k]
    return Volume(voxels, ijk_to_ras, parent, source=volume_node.GetID())


def current_grid(volume_node, sent: Volume) -> np.ndarray:
    """IJK → world of the volume as it is now, for a result computed on `sent`.

    The user may move the volume (drag a registration, harden a transform) while the server works: the
    mask belongs to the voxels, so it goes where they are now. A volume removed or resampled meanwhile
    has no such voxels any more: refused, before any change.
    """
    name = volume_node.GetName()
    if volume_node.GetScene() is None or volume_node.GetImageData() is None:
        raise BadInput(f"'{name}' was closed while the server was working; the result was not applied.")
    shape = tuple(int(n) for n in volume_node.GetImageData().GetDimensions())
    if shape != sent.shape:
        raise BadInput(
            f"'{name}' was resampled or cropped while the server was working ({' × '.join(map(str, sent.shape))} "
            f"voxels then, {' × '.join(map(str, shape))} now); the result was not applied. Run the step again."
        )
    return world_matrix(_ijk_to_ras(volume_node), to_world_matrix(volume_node))


def check_segmentation(segmentation_node, segment_id: str | None = None) -> None:
    """Refuse a target the result cannot be written into: before sending, and again before the undo
    checkpoint (the scene may change while the server works). `segment_id` None: any segment will do."""
    if segmentation_node is None or (segment_id is not None and not segment_id):
        what = "a segmentation" if segment_id is None else "a segmentation and a segment"
        raise BadInput(f"Select {what} to write the result into.")
    if segmentation_node.GetScene() is None:
        raise BadInput(f"'{segmentation_node.GetName()}' was closed; select a segmentation to write into.")
    if segment_id is not None and segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise BadInput("Select a segment to write into (add one in the Segment Editor).")
    to_world_matrix(segmentation_node)  # refuses a warping transform


def labelmap_placement(ijk_to_world: np.ndarray, segmentation_node) -> np.ndarray:
    """Where a labelmap on the volume's grid goes, in the segmentation's parent frame (see `_import`)."""
    return matrix_in_frame(ijk_to_world, to_world_matrix(segmentation_node))


def volume_key(volume_node) -> tuple:
    """Changes whenever the voxels, the geometry or the parent transforms change: when to export again."""
    parent = to_world_matrix(volume_node)
    return (
        volume_node.GetID(),
        volume_node.GetImageData().GetMTime() if volume_node.GetImageData() else 0,
        _ijk_to_ras(volume_node).tobytes(),
        None if parent is None else parent.tobytes(),
    )


def _ijk_to_ras(volume_node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def control_points_world(markups_node) -> np.ndarray:
    """World positions (N×3) of the placed control points; points still being placed are left out."""
    if markups_node is None:
        return np.empty((0, 3))
    placed = []
    for n in range(markups_node.GetNumberOfControlPoints()):
        if markups_node.GetNthControlPointPositionStatus(n) != markups_node.PositionDefined:
            continue
        position = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPositionWorld(n, position)
        placed.append(position)
    return np.asarray(placed, dtype=float).reshape(-1, 3)


def write_segment(mask: np.ndarray, placement: np.ndarray, segmentation_node, segment_id: str) -> None:
    """Replace the content of one segment with the binary mask (mask > 0); `placement` from
    `labelmap_placement` (checked with `check_segmentation` before the undo checkpoint)."""
    _import((mask > 0).astype(np.uint8), placement, segmentation_node, [segment_id])


def write_label_segments(
    mask: np.ndarray, names: list[tuple[int, str]], placement: np.ndarray, segmentation_node
) -> list[str]:
    """One segment per (value, name): an existing segment of that name is replaced, others are added."""
    segmentation = segmentation_node.GetSegmentation()
    ids = []
    for _, name in names:
        segment_id = segmentation.GetSegmentIdBySegmentName(name)
        ids.append(segment_id or segmentation.AddEmptySegment("", name))
    _import(compact_labels(mask, [value for value, _ in names]), placement, segmentation_node, ids)
    return ids


def segment_labelmap(segmentation_node, segment_id: str, volume_node, volume: Volume) -> np.ndarray:
    """The segment as a binary [i, j, k] label map on the volume's voxels (Save label: what the server
    stores for training). Exported onto a reference on the volume's grid placed in the segmentation's own
    frame, as `_import` does the other way, so parent transforms on either side are honoured once."""
    check_segmentation(segmentation_node, segment_id)
    placement = labelmap_placement(current_grid(volume_node, volume), segmentation_node)
    scene = segmentation_node.GetScene()
    reference, exported = slicer.vtkMRMLLabelMapVolumeNode(), slicer.vtkMRMLLabelMapVolumeNode()
    for node in (reference, exported):
        node.SetHideFromEditors(True)
        scene.AddNode(node)
    try:
        reference.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(placement))
        slicer.util.updateVolumeFromArray(reference, np.zeros(volume.shape[::-1], dtype=np.uint8))
        if segmentation_node.GetParentTransformNode() is not None:
            reference.SetAndObserveTransformNodeID(segmentation_node.GetParentTransformNode().GetID())
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if not logic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, exported, reference, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
        ):
            raise BadInput("Slicer could not export the segment as a label map.")
        labels = np.array(slicer.util.arrayFromVolume(exported)).T  # [k, j, i] → [i, j, k]
    finally:
        for node in (reference, exported):
            scene.RemoveNode(node)
    if labels.shape != volume.shape:
        raise BadInput(f"The exported segment ({labels.shape}) is not on the volume's grid ({volume.shape}).")
    return (labels > 0).astype(np.uint8)


def _import(labels: np.ndarray, placement: np.ndarray, segmentation_node, segment_ids: list[str]) -> None:
    """Import labels 1..N into the segments `segment_ids`, placed where the volume is shown.

    The temporary labelmap is put under the segmentation's own parent transform with the volume's grid
    expressed in that frame (`placement`), so the import sees no transform between the two: Slicer's
    import with explicit segment ids applies a labelmap's parent transform twice.
    """
    scene = segmentation_node.GetScene()
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    labelmap.SetName("AIAA result")
    labelmap.SetHideFromEditors(True)
    scene.AddNode(labelmap)
    try:
        labelmap.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(placement))
        slicer.util.updateVolumeFromArray(labelmap, np.ascontiguousarray(labels.astype(np.uint16).T))
        if segmentation_node.GetParentTransformNode() is not None:
            labelmap.SetAndObserveTransformNodeID(segmentation_node.GetParentTransformNode().GetID())
        ids = vtk.vtkStringArray()
        for segment_id in segment_ids:
            ids.InsertNextValue(segment_id)
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if not logic.ImportLabelmapToSegmentationNode(labelmap, segmentation_node, ids):
            raise BadInput("Slicer could not write the result into the segmentation.")
    finally:
        scene.RemoveNode(labelmap)
