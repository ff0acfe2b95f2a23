"""The Slicer layer on Slicer's real MRML classes (`slicer-core` from PyPI, no application): a volume under a
parent transform exported for the server, markup clicks → IJK, masks written into segments on the right
voxels (segmentation under its own transform too), auto-segmentation segments named from the model, and
the undo checkpoint taken before each change. The scene changing under a request: test_slicer_mrml_changes.py.

App-only parts (Qt widgets, the Segment Editor's own saveStateForUndo, slice-view clicks) cannot run here;
the checkpoint is exercised with the real vtkSegmentationHistory the editor uses underneath.
"""

from __future__ import annotations

import numpy as np
import pytest
from mrml_scene import (
    linear_transform,
    rigid,
    scene,
    segmentation,
    segmentation_converters,
    slicer,
    volume_node,
    world_voxels,
)

__all__ = ["scene", "segmentation", "segmentation_converters", "volume_node"]  # the fixtures

# after mrml_scene, which skips this module where slicer-core is not installed
from AIAASegmentLib import BadInput, ModelInfo, Result, ijk_to_world  # noqa: E402
from AIAASegmentSlicer import mrml_bridge  # noqa: E402
from AIAASegmentSlicer.logic import AIAALogic, Request, Target  # noqa: E402


def test_export_keeps_voxels_geometry_and_parents(volume_node):
    volume = mrml_bridge.volume_from_node(volume_node)
    assert volume.shape == (8, 7, 6)
    assert volume.voxels[5, 3, 2] == slicer.util.arrayFromVolume(volume_node)[2, 3, 5]
    np.testing.assert_allclose(volume.ijk_to_ras[:3, :3], np.diag([-2.0, -2.5, 3.0]))
    np.testing.assert_allclose(volume.parent_to_world, rigid(25, 2, [15, -10, 5]))
    # the export is a copy: later edits in Slicer do not change what is being sent
    slicer.util.arrayFromVolume(volume_node)[2, 3, 5] = -1
    assert volume.voxels[5, 3, 2] != -1


def test_markups_under_their_own_transform_map_to_the_clicked_voxels(scene, volume_node, segmentation):
    volume = mrml_bridge.volume_from_node(volume_node)
    markups = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(markups)
    markups_parent = rigid(-40, 0, [3, 4, 5])
    markups.SetAndObserveTransformNodeID(linear_transform(scene, markups_parent).GetID())
    wanted = np.array([[1, 2, 3], [7, 6, 5], [0, 0, 0]])
    world = ijk_to_world(wanted + 0.3, volume.ijk_to_world)
    local = ijk_to_world(world, np.linalg.inv(markups_parent))  # positions stored in the markup's own frame
    for point in local:
        markups.AddControlPoint(*point)
    clicked = mrml_bridge.control_points_world(markups)
    np.testing.assert_allclose(clicked, world, atol=1e-6)

    logic = AIAALogic()
    logic.client = object()  # connected; nothing is sent in prepare
    logic.models = [ModelInfo("clicks", "deepgrow", [])]
    target = Target(volume_node, segmentation, "target")
    request = logic.prepare_deepgrow(target, clicked[:2], clicked[2:], "clicks")
    assert request.volume.shape == (8, 7, 6) and request.consent_needed and request.target is target
    with pytest.raises(BadInput, match="at least 6"):  # refused before any upload
        logic.prepare_extreme_points(target, clicked, "clicks")


def test_points_not_placed_yet_are_ignored(scene):
    markups = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(markups)
    markups.AddControlPoint(1, 2, 3)
    markups.AddControlPoint(4, 5, 6)
    markups.UnsetNthControlPointPosition(1)  # a point the user has not placed yet
    np.testing.assert_allclose(mrml_bridge.control_points_world(markups), [[1, 2, 3]])


@pytest.mark.parametrize("segmentation_under_transform", [False, True])
def test_mask_lands_on_the_volume_voxels_in_world(scene, volume_node, segmentation_under_transform):
    volume = mrml_bridge.volume_from_node(volume_node)
    segmentation = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(segmentation)
    if segmentation_under_transform:
        segmentation.SetAndObserveTransformNodeID(linear_transform(scene, rigid(90, 1, [0, 50, 0])).GetID())
    segment_id = segmentation.GetSegmentation().AddEmptySegment("", "target")
    mask = np.zeros(volume.shape, np.uint8)
    mask[1, 2, 3] = mask[6, 5, 4] = 1
    placement = mrml_bridge.labelmap_placement(volume.ijk_to_world, segmentation)
    mrml_bridge.write_segment(mask, placement, segmentation, segment_id)
    expected = np.round(ijk_to_world([[1, 2, 3], [6, 5, 4]], volume.ijk_to_world), 3)
    assert sorted(map(tuple, world_voxels(segmentation, segment_id))) == sorted(map(tuple, expected))
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0  # the temporary node is gone

    mask[:] = 0
    mask[0, 0, 0] = 1  # a new result replaces the segment's content
    mrml_bridge.write_segment(mask, placement, segmentation, segment_id)
    expected = np.round(ijk_to_world([[0, 0, 0]], volume.ijk_to_world), 3)
    np.testing.assert_allclose(world_voxels(segmentation, segment_id), expected)


def test_auto_segmentation_names_segments_and_keeps_an_undo_state(scene, volume_node):
    volume = mrml_bridge.volume_from_node(volume_node)
    segmentation = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(segmentation)
    history = slicer.vtkSegmentationHistory()
    history.SetSegmentation(segmentation.GetSegmentation())
    mask = np.zeros(volume.shape, np.uint8)
    mask[1, 1, 1], mask[2, 2, 2], mask[3, 3, 3] = 1, 3, 7  # gaps: no 2, 4, 5, 6 in this result
    model = ModelInfo("organs", "segmentation", ["spleen", "liver", "kidney"])
    result = Result(mask, {"label_names": {"spleen": 1, "liver": 2, "kidney": 3, "tumour": 7}})

    request = Request(None, volume, model, False, Target(volume_node, segmentation))
    message = AIAALogic.apply_auto_segmentation(result, request, history.SaveState)
    assert message == "Done: segments spleen, kidney, tumour."
    seg = segmentation.GetSegmentation()
    names = [seg.GetNthSegment(n).GetName() for n in range(seg.GetNumberOfSegments())]
    assert names == ["spleen", "kidney", "tumour"]
    for value, name in [(1, "spleen"), (3, "kidney"), (7, "tumour")]:
        voxel = np.argwhere(mask == value)
        np.testing.assert_allclose(world_voxels(segmentation, seg.GetSegmentIdBySegmentName(name)),
                                   np.round(ijk_to_world(voxel, volume.ijk_to_world), 3))

    # the checkpoint was taken before the change: restoring it gives the empty segmentation back
    assert history.IsRestorePreviousStateAvailable()
    history.RestorePreviousState()
    assert seg.GetNumberOfSegments() == 0


def test_running_auto_segmentation_again_replaces_segments_of_the_same_name(scene, volume_node):
    volume = mrml_bridge.volume_from_node(volume_node)
    segmentation = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(segmentation)
    model = ModelInfo("spleen", "segmentation", ["spleen"])
    checkpoints = []
    for voxel in ([1, 1, 1], [4, 4, 4]):
        mask = np.zeros(volume.shape, np.uint8)
        mask[tuple(voxel)] = 1
        AIAALogic.apply_auto_segmentation(Result(mask, {}, reuploaded=True),
                                          Request(None, volume, model, False, Target(volume_node, segmentation)),
                                          lambda: checkpoints.append(1))
    seg = segmentation.GetSegmentation()
    assert seg.GetNumberOfSegments() == 1 and len(checkpoints) == 2
    np.testing.assert_allclose(world_voxels(segmentation, seg.GetNthSegmentID(0)),
                               np.round(ijk_to_world([[4, 4, 4]], volume.ijk_to_world), 3))


def test_nothing_found_changes_nothing(scene, volume_node):
    volume = mrml_bridge.volume_from_node(volume_node)
    segmentation = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(segmentation)
    checkpoints = []
    request = Request(None, volume, ModelInfo("s", "segmentation", ["spleen"]), False,
                      Target(volume_node, segmentation))
    message = AIAALogic.apply_auto_segmentation(Result(np.zeros(volume.shape, np.uint8), {}), request,
                                                lambda: checkpoints.append(1))
    assert "found nothing" in message and checkpoints == []
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 0


def test_volume_under_a_warping_transform_is_refused(scene, volume_node):
    grid = slicer.vtkMRMLGridTransformNode()
    scene.AddNode(grid)
    volume_node.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(BadInput, match="Harden the transform"):
        mrml_bridge.volume_from_node(volume_node)


def test_exported_volume_is_reused_until_the_node_changes(volume_node):
    logic = AIAALogic()
    first = logic.volume(volume_node)
    assert logic.volume(volume_node) is first
    slicer.util.arrayFromVolume(volume_node)[0, 0, 0] = 99
    slicer.util.arrayFromVolumeModified(volume_node)
    second = logic.volume(volume_node)
    assert second is not first and second.voxels[0, 0, 0] == 99
    volume_node.GetParentTransformNode().SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(np.eye(4)))
    assert logic.volume(volume_node) is not second


def test_empty_model_lists_say_why():
    logic = AIAALogic()
    assert logic.empty_reason("deepgrow").startswith("Not connected")
    with pytest.raises(BadInput, match="Not connected"):
        logic.prepare_auto_segmentation(Target(None, None), "spleen")
    logic.client = object()
    logic.models = [ModelInfo("spleen", "segmentation", ["spleen"]), ModelInfo("ep", "annotation", [])]
    assert logic.empty_reason("segmentation") == ""
    assert logic.empty_reason("deepgrow") == (
        "This server has no Deepgrow clicks model (model types it serves: annotation, segmentation)."
    )
    with pytest.raises(BadInput, match="Choose a model"):
        logic.model("deepgrow_3d")
