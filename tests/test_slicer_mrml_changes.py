"""The Slicer layer when the scene changes under a request (issue 18), on Slicer's real MRML classes: targets
refused before anything is sent, the mask placed where the volume is when the answer comes, sheared grids
refused before upload, and superseded server sessions deleted.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
from aiaa_helpers import http_reply as reply
from image_fixtures import shear
from mrml_scene import (
    SHAPE_KJI,
    rigid,
    scene,
    segmentation,
    segmentation_converters,
    volume_node,
    world_voxels,
)
from requests_toolbelt import MultipartEncoder

__all__ = ["scene", "segmentation", "segmentation_converters", "volume_node"]  # the fixtures

# after mrml_scene, which skips this module where slicer-core is not installed
import slicer  # noqa: E402
import vtk  # noqa: E402
from AIAASegmentLib import BadInput, Client, ModelInfo, ijk_to_world, read_nifti, write_nifti  # noqa: E402
from AIAASegmentSlicer import mrml_bridge  # noqa: E402
from AIAASegmentSlicer.logic import AIAALogic, Target  # noqa: E402

MASK_BOX = (slice(2, 5), slice(1, 4), slice(1, 3))  # [i, j, k] voxels every fake answer marks


class FakeServer:
    """An AIAA server in process (the client's `http`): sessions, a mask on the sent grid, every call recorded."""

    def __init__(self):
        self.images: dict[str, bytes] = {}
        self.calls: list[tuple[str, str]] = []
        self.uploads = 0

    def request(self, method, url, params=None, files=None, timeout=None):
        path = "/" + url.split("//", 1)[1].split("/", 1)[1]
        self.calls.append((method, path))
        if method == "PUT":
            self.uploads += 1
            session_id = f"s{self.uploads}"
            self.images[session_id] = files["image"][1]
            return reply(200, json.dumps({"session_id": session_id}).encode())
        if method == "DELETE":
            return reply(200 if self.images.pop(path.rsplit("/", 1)[1], None) else 404)
        session_id = (params or {}).get("session_id")
        if session_id and session_id not in self.images:
            return reply(440, b'{"error": {"message": "expired"}}')
        voxels, affine = read_nifti(self.images[session_id] if session_id else files["image"][1])
        mask = np.zeros(voxels.shape, np.uint8)
        mask[MASK_BOX] = 1
        body = MultipartEncoder({"params": (None, "{}", "application/json"),
                                 "image": ("m.nii.gz", write_nifti(mask, affine), "application/octet-stream")})
        return reply(200, body.to_string(), body.content_type)


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def logic(server) -> AIAALogic:
    logic = AIAALogic()
    logic.client = Client("http://aiaa", http=server)
    logic.models = [ModelInfo("organs", "segmentation", ["spleen"]), ModelInfo("clicks", "deepgrow", [])]
    return logic


def click_on(volume_node, voxel) -> np.ndarray:
    return ijk_to_world([voxel], mrml_bridge.volume_from_node(volume_node).ijk_to_world)


def deepgrow(logic, target: Target, checkpoints: list) -> str:
    """What the runner does: prepare (GUI thread), run (worker), apply (GUI thread)."""
    request = logic.prepare_deepgrow(target, click_on(target.volume_node, [3, 2, 1]), np.empty((0, 3)), "clicks")
    return logic.apply_to_segment(request.run(), request, lambda: checkpoints.append(1))


def test_segmentation_under_a_warping_transform_is_refused_before_anything_is_sent(
    scene, volume_node, segmentation, server, logic
):
    warp = slicer.vtkMRMLGridTransformNode()
    scene.AddNode(warp)
    segmentation.SetAndObserveTransformNodeID(warp.GetID())
    checkpoints = []
    for prepare in (lambda: logic.prepare_auto_segmentation(Target(volume_node, segmentation), "organs"),
                    lambda: deepgrow(logic, Target(volume_node, segmentation, "target"), checkpoints)):
        with pytest.raises(BadInput, match="Harden the transform"):
            prepare()
    assert server.calls == [] and checkpoints == []  # no upload, no inference, no empty undo step


def test_a_warp_added_while_the_server_works_is_refused_before_the_undo_checkpoint(
    scene, volume_node, segmentation, server, logic
):
    request = logic.prepare_auto_segmentation(Target(volume_node, segmentation), "organs")
    result = request.run()
    warp = slicer.vtkMRMLGridTransformNode()
    scene.AddNode(warp)
    segmentation.SetAndObserveTransformNodeID(warp.GetID())
    checkpoints = []
    with pytest.raises(BadInput, match="Harden the transform"):
        logic.apply_auto_segmentation(result, request, lambda: checkpoints.append(1))
    assert checkpoints == [] and segmentation.GetSegmentation().GetNumberOfSegments() == 1


def test_mask_goes_where_the_volume_is_when_the_answer_comes(scene, volume_node, segmentation, logic):
    request = logic.prepare_deepgrow(Target(volume_node, segmentation, "target"),
                                     click_on(volume_node, [3, 2, 1]), np.empty((0, 3)), "clicks")
    result = request.run()
    # the user drags the registration while the server works
    volume_node.GetParentTransformNode().SetMatrixTransformToParent(
        slicer.util.vtkMatrixFromArray(rigid(-30, 0, [20, 5, -8]))
    )
    assert logic.apply_to_segment(result, request, lambda: None) == "Done: 18 voxels."
    now = mrml_bridge.volume_from_node(volume_node).ijk_to_world
    expected = np.round(ijk_to_world(np.argwhere(result.mask), now), 3)
    assert sorted(map(tuple, world_voxels(segmentation, "target"))) == sorted(map(tuple, expected))


@pytest.mark.parametrize("change", ["resampled", "closed"])
def test_a_volume_resampled_or_closed_meanwhile_is_refused_before_the_undo_checkpoint(
    scene, volume_node, segmentation, logic, change
):
    request = logic.prepare_auto_segmentation(Target(volume_node, segmentation), "organs")
    result = request.run()
    if change == "resampled":
        slicer.util.updateVolumeFromArray(volume_node, np.zeros((3, 7, 8), np.int16))
    else:
        scene.RemoveNode(volume_node)
    checkpoints = []
    with pytest.raises(BadInput, match=f"was {change}.*not applied"):
        logic.apply_auto_segmentation(result, request, lambda: checkpoints.append(1))
    assert checkpoints == [] and segmentation.GetSegmentation().GetNumberOfSegments() == 1


def test_a_target_missing_is_refused_before_anything_is_sent(volume_node, segmentation, server, logic):
    with pytest.raises(BadInput, match="Select a segmentation to write"):
        logic.prepare_auto_segmentation(Target(volume_node, None), "organs")
    with pytest.raises(BadInput, match="Select a segmentation and a segment"):
        deepgrow(logic, Target(volume_node, segmentation, ""), [])
    with pytest.raises(BadInput, match="Select a segment to write into"):
        deepgrow(logic, Target(volume_node, segmentation, "deleted meanwhile"), [])
    assert server.calls == []


@pytest.mark.parametrize("how", ["gantry tilt", "hardened shear"])
def test_a_sheared_volume_is_refused_before_upload(scene, volume_node, segmentation, server, logic, how):
    if how == "gantry tilt":
        ijk_to_ras = vtk.vtkMatrix4x4()
        volume_node.GetIJKToRASMatrix(ijk_to_ras)
        volume_node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(
            shear(15) @ slicer.util.arrayFromVTKMatrix(ijk_to_ras)
        ))
    else:
        volume_node.GetParentTransformNode().SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shear(15)))
        assert slicer.vtkSlicerTransformLogic.hardenTransform(volume_node)
    with pytest.raises(BadInput, match="sheared voxel grid.*Resample"):
        logic.prepare_auto_segmentation(Target(volume_node, segmentation), "organs").run()
    assert server.calls == []


def test_a_hardened_rotation_is_not_a_shear(volume_node, segmentation, server, logic):
    assert slicer.vtkSlicerTransformLogic.hardenTransform(volume_node)  # rotated 25°, moved: still right-angled
    logic.prepare_auto_segmentation(Target(volume_node, segmentation), "organs").run()
    assert server.uploads == 1


def edit_voxel(volume_node) -> None:
    slicer.util.arrayFromVolume(volume_node)[0, 0, 0] += 1
    slicer.util.arrayFromVolumeModified(volume_node)


def test_the_session_of_an_edited_volume_is_deleted_on_the_server(volume_node, segmentation, server, logic):
    target = Target(volume_node, segmentation, "target")
    deepgrow(logic, target, [])
    deepgrow(logic, target, [])
    assert server.uploads == 1  # clicks on an unchanged volume reuse the upload
    edit_voxel(volume_node)
    assert deepgrow(logic, target, []) == "Done: 18 voxels."
    assert server.calls[-2:] == [("POST", "/v1/deepgrow"), ("DELETE", "/session/s1")]
    assert set(server.images) == {"s2"} and logic.client.sessions.session_ids() == ["s2"]


def test_a_session_pushed_out_of_the_client_list_is_deleted_on_the_server(scene, segmentation, server, logic):
    nodes = []
    for n in range(9):  # one more than the client keeps
        node = slicer.vtkMRMLScalarVolumeNode()
        scene.AddNode(node)
        slicer.util.updateVolumeFromArray(node, np.full(SHAPE_KJI, n, np.int16))
        nodes.append(node)
        logic.prepare_auto_segmentation(Target(node, segmentation), "organs").run()
    assert server.uploads == 9 and ("DELETE", "/session/s1") in server.calls
    assert sorted(server.images) == sorted(logic.client.sessions.session_ids()) and len(server.images) == 8
    logic.prepare_auto_segmentation(Target(nodes[-1], segmentation), "organs").run()
    assert server.uploads == 9  # the latest ones are kept


@pytest.mark.parametrize("answer", [404, 440, 500, "unreachable"])
def test_a_failed_delete_does_not_fail_the_users_step(volume_node, segmentation, server, logic, answer):
    target = Target(volume_node, segmentation, "target")
    deepgrow(logic, target, [])
    edit_voxel(volume_node)
    answer_delete = server.request

    def request(method, url, **kwargs):
        if method != "DELETE":
            return answer_delete(method, url, **kwargs)
        server.calls.append((method, url))
        if answer == "unreachable":
            raise requests.ConnectionError("connection refused")
        return reply(answer, b'{"error": {"message": "no such session"}}')

    server.request = request
    checkpoints = []
    assert deepgrow(logic, target, checkpoints) == "Done: 18 voxels." and checkpoints == [1]
    assert server.calls[-1][0] == "DELETE"
    server.request = answer_delete
    deepgrow(logic, target, [])
    assert server.calls[-1][0] == "POST"  # a failed delete is not tried on every later click
