"""The Slicer extension's *Save label* against a live server: the selected segment, exported by Slicer's own
segmentation logic onto the volume's voxels (volume and segmentation each under their own transform), lands
in the server's training datastore voxel for voxel, with the volume sent as its session or as an upload;
wrong admin credentials are told as such and store nothing."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from admin_helpers import ADMIN_ENV, PASSWORD, USER
from conftest import start_server, stop_server

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) is not installed")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed `slicer` module has no MRML classes", allow_module_level=True)

from AIAASegmentLib import BadInput, Preferences  # noqa: E402
from AIAASegmentSlicer import mrml_bridge  # noqa: E402
from AIAASegmentSlicer.logic import AIAALogic, Target  # noqa: E402
from mrml_scene import linear_transform, rigid, segmentation_converters  # noqa: E402, F401

SHAPE_KJI = (10, 12, 14)  # the volume is 14 × 12 × 10 voxels (i, j, k)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slicer-save-label")
    live = start_server(
        tmp, "--models", "segmentation_spleen", "--no-warm-up", "--datastore", str(tmp / "datastore"), env=ADMIN_ENV
    )
    live.datastore = tmp / "datastore"
    yield live
    stop_server(live)


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def target(scene) -> Target:
    """A CT-like volume under a rotated parent transform and a segmentation under another one, holding a
    segment drawn on known voxels."""
    volume_node = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(volume_node)
    voxels = (np.random.default_rng(0).normal(40, 20, SHAPE_KJI)).astype(np.int16)
    slicer.util.updateVolumeFromArray(volume_node, voxels)
    volume_node.SetIJKToRASMatrix(
        slicer.util.vtkMatrixFromArray(np.array([[-2.0, 0, 0, 30], [0, -2.5, 0, 40], [0, 0, 3.0, -50], [0, 0, 0, 1]]))
    )
    volume_node.SetAndObserveTransformNodeID(linear_transform(scene, rigid(25, 2, [15, -10, 5])).GetID())
    segmentation = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(segmentation)
    segmentation.SetAndObserveTransformNodeID(linear_transform(scene, rigid(90, 1, [0, 50, 0])).GetID())
    segment_id = segmentation.GetSegmentation().AddEmptySegment("", "spleen")
    return Target(volume_node, segmentation, segment_id)


def drawn_mask(logic: AIAALogic, chosen: Target) -> np.ndarray:
    volume = logic.volume(chosen.volume_node)
    mask = np.zeros(volume.shape, np.uint8)
    mask[3:9, 2:7, 4:8] = 1
    mask[11, 10, 1] = 1
    placement = mrml_bridge.labelmap_placement(volume.ijk_to_world, chosen.segmentation_node)
    mrml_bridge.write_segment(mask, placement, chosen.segmentation_node, chosen.segment_id)
    return mask


@pytest.mark.parametrize("use_sessions", [True, False])
def test_save_label_stores_the_segment_on_the_volume_voxels(server, scene, use_sessions):
    logic = AIAALogic(Preferences(use_sessions=use_sessions))
    logic.connect(server.url)
    chosen = target(scene)
    mask = drawn_mask(logic, chosen)
    volume = logic.volume(chosen.volume_node)
    if use_sessions:
        logic.client.create_session(volume)  # as after a first click: the label goes with the session id
    exported = mrml_bridge.segment_labelmap(chosen.segmentation_node, chosen.segment_id, chosen.volume_node, volume)
    np.testing.assert_array_equal(exported, mask)  # Slicer's export lands on the drawn voxels
    message = logic.save_label(chosen, (USER, PASSWORD))
    assert message.startswith("Saved 'spleen' for training") and f"{int(mask.sum())} voxels" in message
    image_id = message.rsplit("image ", 1)[1].rstrip(").")
    stored = sitk.ReadImage(str(server.datastore / "labels" / "final" / f"{image_id}.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(stored).T, mask)
    image = sitk.ReadImage(str(server.datastore / f"{image_id}.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).T, volume.voxels)
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0  # the temporary nodes are gone


def test_wrong_credentials_and_empty_segments_are_told_and_store_nothing(server, scene):
    logic = AIAALogic(Preferences(use_sessions=False))
    logic.connect(server.url)
    chosen = target(scene)
    with pytest.raises(BadInput, match="empty"):
        logic.save_label(chosen, (USER, PASSWORD))
    drawn_mask(logic, chosen)
    before = sorted(server.datastore.rglob("*.nii.gz")) if server.datastore.exists() else []
    with pytest.raises(BadInput, match="refused the admin credentials"):
        logic.save_label(chosen, (USER, "not-the-password"))
    with pytest.raises(BadInput, match="admin user and password"):
        logic.save_label(chosen, ("", ""))
    after = sorted(server.datastore.rglob("*.nii.gz")) if server.datastore.exists() else []
    assert after == before
