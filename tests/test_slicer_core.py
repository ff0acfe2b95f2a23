"""The Slicer extension's pure-Python core, without Slicer or a server: geometry through parent transforms,
point checks, the session cache key, label names with gaps, the mask geometry check, the NIfTI writer and
reader (against nibabel and SimpleITK), background tasks and URL history. The client's replies and sessions:
test_slicer_client.py."""

from __future__ import annotations

import threading

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from AIAASegmentLib import (  # noqa: E402
    BackgroundTask,
    BadInput,
    Cancelled,
    GeometryMismatch,
    SessionCache,
    Volume,
    check_mask_geometry,
    compact_labels,
    ijk_to_world,
    is_sheared,
    label_names,
    matrix_in_frame,
    nearest_voxel,
    normalise_url,
    read_nifti,
    refuse_sheared,
    remember_url,
    segments_in_mask,
    validate_clicks,
    validate_extreme_points,
    world_matrix,
    world_to_ijk,
    write_nifti,
)
from image_fixtures import shear

from aiaa_core.phantoms import make_phantom  # noqa: E402
from aiaa_core.volumes import ras_affine, to_array  # noqa: E402

SHAPE = (20, 18, 16)


def rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    a = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    m = np.eye(4)
    m[:3, :3] = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k
    return m


def parent_transform() -> np.ndarray:
    """A registration-like rigid transform: rotated 30° about a tilted axis and moved 40 mm."""
    m = rotation((1, 2, 3), 30.0)
    m[:3, 3] = [40.0, -25.0, 12.5]
    return m


@pytest.fixture(params=["RAS", "LPS", "oblique"])
def phantom_geometry(request):
    phantom = make_phantom(7, size=SHAPE, spacing=(2.0, 2.5, 3.0), orientation=request.param)
    return phantom, ras_affine(phantom.image)


# ------------------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("under_transform", [False, True])
def test_clicked_world_point_lands_on_its_voxel(phantom_geometry, under_transform):
    phantom, affine = phantom_geometry
    parent = parent_transform() if under_transform else None
    full = world_matrix(affine, parent)
    voxel = np.array([13, 4, 9])
    # Where Slicer would report the click: the voxel centre as displayed (parent transform applied),
    # nudged by less than half a voxel as a real click would be.
    world = ijk_to_world(voxel + [0.3, -0.4, 0.2], full)
    assert nearest_voxel(world_to_ijk(world, full)).tolist() == [voxel.tolist()]
    # The same point in SimpleITK's own terms (LPS physical point → index) agrees when there is no parent.
    if parent is None:
        lps = world[0] * [-1, -1, 1]
        assert list(phantom.image.TransformPhysicalPointToIndex(lps.tolist())) == voxel.tolist()


def test_ignoring_the_parent_transform_picks_another_voxel(phantom_geometry):
    _, affine = phantom_geometry
    full = world_matrix(affine, parent_transform())
    world = ijk_to_world([[10, 9, 8]], full)
    assert nearest_voxel(world_to_ijk(world, affine)).tolist() != [[10, 9, 8]]


def test_matrix_in_frame_places_a_labelmap_under_another_transform():
    volume_world = world_matrix(np.diag([2.0, 3.0, 4.0, 1.0]), parent_transform())
    segmentation_parent = rotation((0, 0, 1), 90.0)
    in_segmentation = matrix_in_frame(volume_world, segmentation_parent)
    voxel = [[3, 4, 5]]
    np.testing.assert_allclose(
        ijk_to_world(voxel, segmentation_parent @ in_segmentation), ijk_to_world(voxel, volume_world)
    )


def test_a_sheared_grid_is_told_from_an_oblique_one_and_float_noise(phantom_geometry, tmp_path):
    _, affine = phantom_geometry
    assert not is_sheared(affine) and not is_sheared(parent_transform() @ affine)
    assert not is_sheared(affine + np.random.default_rng(0).normal(0, 1e-6, (4, 4)) * [1, 1, 1, 0])
    tilted = shear(15) @ affine
    assert is_sheared(tilted) and is_sheared(shear(0.05) @ affine)
    refuse_sheared(affine)
    with pytest.raises(BadInput, match="'CT 3' has a sheared voxel grid.*Resample"):
        refuse_sheared(tilted, "'CT 3'")
    # why: a server's reader (ITK) takes the right-angled qform, so the grid comes back on other axes
    path = tmp_path / "tilted.nii.gz"
    path.write_bytes(write_nifti(np.zeros(SHAPE, np.int16), tilted))
    assert not np.allclose(ras_affine(sitk.ReadImage(str(path))), tilted, atol=1e-3)


def test_world_matrix_refuses_non_4x4():
    with pytest.raises(ValueError, match="4x4"):
        world_matrix(np.eye(3))


# ------------------------------------------------------------------------------------------ points


def test_extreme_points_need_six():
    with pytest.raises(BadInput, match=r"at least 6 .*you have 5; 1 more"):
        validate_extreme_points([[1, 1, 1]] * 5, SHAPE)
    points = validate_extreme_points([[0.4, 1.6, 2], [19.4, 3, 4], [5, 0, 5], [5, 17, 5], [5, 5, 0], [5, 5, 15]], SHAPE)
    assert points[0] == [0, 2, 2] and points[1] == [19, 3, 4]
    assert all(isinstance(v, int) for p in points for v in p)


@pytest.mark.parametrize("outside", [[-0.6, 3, 3], [19.5, 3, 3], [3, 18, 3], [3, 3, -1]])
def test_points_outside_the_volume_are_refused(outside):
    inside = [[1, 1, 1]] * 5
    with pytest.raises(BadInput, match="Extreme point 6 lies outside"):
        validate_extreme_points(inside + [outside], SHAPE)
    with pytest.raises(BadInput, match="Background point 1 lies outside"):
        validate_clicks([[1, 1, 1]], [outside], SHAPE)


def test_clicks_need_a_foreground_point():
    with pytest.raises(BadInput, match="inside the structure"):
        validate_clicks([], [[1, 1, 1]], SHAPE)
    assert validate_clicks([[2.2, 3, 4]], [], SHAPE) == ([[2, 3, 4]], [])


# ------------------------------------------------------------------------------------------ sessions


def test_session_cache_is_keyed_by_voxels_and_geometry():
    voxels = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    cache = SessionCache()
    cache.put(Volume(voxels, affine), "s1")
    assert cache.get(Volume(voxels.copy(), affine.copy())) == "s1"  # same content, new objects
    # a Fortran-ordered view of the same voxels (what Slicer's [k, j, i] arrays become) is the same volume
    assert cache.get(Volume(np.asfortranarray(voxels), affine)) == "s1"
    edited = voxels.copy()
    edited[3, 4, 5] += 1
    assert cache.get(Volume(edited, affine)) is None
    moved = affine.copy()
    moved[0, 3] = 5.0
    assert cache.get(Volume(voxels, moved)) is None
    assert cache.get(Volume(voxels.astype(np.int32), affine)) is None
    # a parent (registration) transform moves the display, not what the server holds
    under = Volume(voxels, affine, parent_transform())
    assert cache.get(under) == "s1"
    np.testing.assert_allclose(under.ijk_to_world, parent_transform() @ affine)
    cache.forget(Volume(voxels, affine))
    assert cache.get(Volume(voxels, affine)) is None


def test_session_cache_keeps_the_latest_volumes():
    cache = SessionCache(capacity=2)
    volumes = [Volume(np.full((2, 2, 2), n, np.uint8), np.eye(4)) for n in range(3)]
    for n, volume in enumerate(volumes):
        cache.put(volume, f"s{n}")
    assert cache.get(volumes[0]) is None and cache.session_ids() == ["s1", "s2"]
    assert cache.take_superseded() == ["s0"] and cache.take_superseded() == []  # handed out once


def test_a_newer_export_of_the_same_volume_supersedes_its_session():
    cache = SessionCache()
    first = Volume(np.zeros((2, 2, 2), np.int16), np.eye(4), source="vtkMRMLScalarVolumeNode1")
    clone = Volume(first.voxels.copy(), np.eye(4), source="vtkMRMLScalarVolumeNode2")  # same content
    other = Volume(np.ones((2, 2, 2), np.int16), np.eye(4), source="vtkMRMLScalarVolumeNode3")
    cache.put(first, "s1")
    cache.put(other, "s3")
    assert cache.get(clone) == "s1"  # same content: the upload is shared
    edited = Volume(first.voxels + 2, np.eye(4), source="vtkMRMLScalarVolumeNode1")
    cache.put(edited, "s2")
    assert cache.take_superseded() == ["s1"] and cache.session_ids() == ["s3", "s2"]
    cache.put(edited, "s4")  # the same content uploaded twice (two requests at once): one is kept
    assert cache.take_superseded() == ["s2"] and cache.get(edited) == "s4"
    cache.forget(edited)  # the server lost it: nothing to delete
    assert cache.take_superseded() == [] and cache.session_ids() == ["s3"]
    unnamed = Volume(np.full((2, 2, 2), 5, np.int16), np.eye(4))
    cache.put(unnamed, "s5")
    cache.put(Volume(unnamed.voxels + 1, np.eye(4)), "s6")  # no source: nothing known to be superseded
    assert cache.take_superseded() == [] and cache.session_ids() == ["s3", "s5", "s6"]


# ------------------------------------------------------------------------------------------ labels


def test_label_names_survive_gaps():
    names = label_names(["spleen", "liver"], {"spleen": 1, "liver": 2, "tumour": 6})
    assert names == {1: "spleen", 2: "liver", 6: "tumour"}
    assert label_names({"kidney": 3}, None) == {3: "kidney"}
    assert label_names([], {"4": "aorta"}) == {4: "aorta"}  # {value: name} from older servers
    mask = np.zeros(SHAPE, np.uint8)
    mask[1, 1, 1], mask[2, 2, 2], mask[3, 3, 3] = 2, 6, 9
    assert segments_in_mask(mask, names) == [(2, "liver"), (6, "tumour"), (9, "Label 9")]
    compact = compact_labels(mask, [2, 6, 9])
    assert (compact[1, 1, 1], compact[2, 2, 2], compact[3, 3, 3]) == (1, 2, 3)
    assert np.count_nonzero(compact) == 3


def test_compact_labels_drops_values_not_asked_for():
    mask = np.array([[[0, 1, 5, 200]]], dtype=np.uint8)
    assert compact_labels(mask, [5]).tolist() == [[[0, 0, 1, 0]]]


# ------------------------------------------------------------------------------------------ geometry check


def test_mask_on_another_grid_is_refused():
    volume = Volume(np.zeros(SHAPE, np.int16), np.diag([2.0, 2.0, 3.0, 1.0]))
    check_mask_geometry(np.zeros(SHAPE, np.uint8), volume.ijk_to_ras + 1e-5, volume)  # float32 noise is fine
    with pytest.raises(GeometryMismatch, match="20, 18, 16"):
        check_mask_geometry(np.zeros((18, 20, 16), np.uint8), volume.ijk_to_ras, volume)
    flipped = np.diag([-2.0, -2.0, 3.0, 1.0])  # LPS read as RAS
    with pytest.raises(GeometryMismatch, match="shifted or rotated"):
        check_mask_geometry(np.zeros(SHAPE, np.uint8), flipped, volume)
    shifted = volume.ijk_to_ras.copy()
    shifted[2, 3] += 3.0  # one slice off
    with pytest.raises(GeometryMismatch):
        check_mask_geometry(np.zeros(SHAPE, np.uint8), shifted, volume)


# ------------------------------------------------------------------------------------------ NIfTI


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("orientation", ["RAS", "LPS", "oblique", "PIR"])
def test_nifti_writer_agrees_with_nibabel_and_simpleitk(tmp_path, orientation, compress):
    phantom = make_phantom(3, size=SHAPE, spacing=(2.0, 2.5, 3.0), orientation=orientation)
    voxels, affine = to_array(phantom.image), ras_affine(phantom.image)
    path = tmp_path / ("v.nii.gz" if compress else "v.nii")
    path.write_bytes(write_nifti(voxels, affine, compress=compress))

    loaded = nib.load(str(path))
    np.testing.assert_allclose(loaded.affine, affine, atol=1e-4)  # sform
    np.testing.assert_allclose(loaded.get_qform(), affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(loaded.dataobj), voxels)
    image = sitk.ReadImage(str(path))
    np.testing.assert_allclose(ras_affine(image), affine, atol=1e-4)
    np.testing.assert_array_equal(to_array(image), voxels)
    assert image.GetPixelID() == sitk.sitkInt16

    back, back_affine = read_nifti(path.read_bytes())
    np.testing.assert_array_equal(back, voxels)
    np.testing.assert_allclose(back_affine, affine, atol=1e-4)


@pytest.mark.parametrize("sform", [True, False])
def test_nifti_reader_reads_simpleitk_masks(tmp_path, sform):
    phantom = make_phantom(4, size=SHAPE, spacing=(2.0, 2.5, 3.0), orientation="oblique")
    mask = sitk.Cast(phantom.label, sitk.sitkUInt8)
    path = tmp_path / "mask.nii.gz"
    sitk.WriteImage(mask, str(path))
    if not sform:  # qform only, as some writers do
        img = nib.load(str(path))
        img.set_sform(None, code=0)
        nib.save(img, str(path))
    voxels, affine = read_nifti(path.read_bytes())
    assert voxels.dtype == np.uint8
    np.testing.assert_array_equal(voxels, to_array(mask))
    np.testing.assert_allclose(affine, ras_affine(mask), atol=1e-4)


def test_nifti_reader_refuses_non_nifti():
    with pytest.raises(ValueError, match="NIfTI"):
        read_nifti(b"\x00" * 400)


# ------------------------------------------------------------------------------------------ tasks, preferences


def test_background_task_hands_back_result_and_errors():
    release = threading.Event()
    task = BackgroundTask(lambda: release.wait(10) and 42)
    assert not task.done()
    release.set()
    assert task.wait(10) and task.done() and task.result() == 42

    failing = BackgroundTask(validate_extreme_points, [], SHAPE)
    assert failing.wait(10)
    with pytest.raises(BadInput):
        failing.result()


def test_cancelled_task_drops_its_result():
    release = threading.Event()
    task = BackgroundTask(release.wait, 10)
    task.cancel()
    assert task.done()  # the GUI stops waiting at once
    release.set()
    assert task.wait(10)
    with pytest.raises(Cancelled):
        task.result()


def test_url_history():
    history = remember_url(["http://a:5000", "http://b:5000"], "b:5000/")
    assert history == ["http://b:5000", "http://a:5000"]
    assert len(remember_url([f"http://h{n}" for n in range(20)], "http://new", limit=10)) == 10
    assert normalise_url("  https://x/aiaa/ ") == "https://x/aiaa"
