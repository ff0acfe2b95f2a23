"""The Slicer layer on Slicer's real MRML classes (`slicer-core` from PyPI, no application): a volume under a
parent transform exported for the server, markup clicks → IJK, masks written into segments on the right
voxels (segmentation under its own transform too), auto-segmentation segments named from the model, and
the undo checkpoint taken before each change. And the scene changing under a request (issue 18): targets
refused before anything is sent, the mask placed where the volume is when the answer comes, sheared grids
refused before upload, and superseded server sessions deleted.

App-only parts (Qt widgets, the Segment Editor's own saveStateForUndo, slice-view clicks) cannot run here;
the checkpoint is exercised with the real vtkSegmentationHistory the editor uses underneath.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
from requests_toolbelt import MultipartEncoder

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) is not installed")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed `slicer` module has no MRML classes", allow_module_level=True)
vtk = pytest.importorskip("vtk")


from AIAASegmentLib import BadInput, Client, ModelInfo, Result, ijk_to_world, read_nifti, write_nifti  # noqa: E402
from AIAASegmentSlicer import mrml_bridge  # noqa: E402
from AIAASegmentSlicer.logic import AIAALogic, Request, Target  # noqa: E402

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


# ------------------------------------------------------------------------------ the scene changing under a request

MASK_BOX = (slice(2, 5), slice(1, 4), slice(1, 3))  # [i, j, k] voxels every fake answer marks


def reply(status: int, body: bytes = b"{}", content_type: str = "application/json") -> requests.Response:
    response = requests.Response()
    response.status_code, response._content = status, body
    response.headers["Content-Type"] = content_type
    return response


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


def shear(degrees: float) -> np.ndarray:
    m = np.eye(4)
    m[1, 2] = np.tan(np.radians(degrees))  # slices shifted in y along k, as a tilted gantry acquires them
    return m


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
