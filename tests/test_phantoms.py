"""The phantom generator: deterministic, geometrically exact in every orientation, anatomically plausible."""

from __future__ import annotations

import functools

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from aiaa_core.phantoms import LABELS, ORIENTATIONS, Phantom, make_phantom, write_phantom

SPLEEN, LIVER, VERTEBRA = LABELS["spleen"], LABELS["liver"], LABELS["vertebra"]
WIDE = {"size": (120, 120, 100), "spacing": (4.0, 4.0, 4.0)}  # 480 x 480 x 400 mm: room for any rotation


@functools.lru_cache(maxsize=64)
def cached(seed: int, size=(112, 96, 64), spacing=(3.0, 3.0, 3.0), orientation="RAS", noise=None) -> Phantom:
    return make_phantom(seed, size=size, spacing=spacing, orientation=orientation, noise=noise)


def arrays(phantom: Phantom) -> tuple[np.ndarray, np.ndarray]:
    return sitk.GetArrayFromImage(phantom.image), sitk.GetArrayFromImage(phantom.label)


def geometry(image: sitk.Image) -> tuple:
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def world_centroid(label: sitk.Image, value: int) -> np.ndarray:
    """Centroid of one label in physical LPS coordinates (mm)."""
    kji = np.argwhere(sitk.GetArrayFromImage(label) == value).mean(axis=0)
    return np.array(label.TransformContinuousIndexToPhysicalPoint(kji[::-1].tolist()))


def volume_mm3(label: sitk.Image, value: int) -> float:
    return float((sitk.GetArrayFromImage(label) == value).sum() * np.prod(label.GetSpacing()))


def grid_centre(image: sitk.Image) -> np.ndarray:
    return np.array(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))


def test_same_seed_gives_identical_phantoms():
    a, b = make_phantom(3), make_phantom(3)
    assert geometry(a.image) == geometry(b.image) and geometry(a.label) == geometry(b.label)
    for x, y in zip(arrays(a), arrays(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert a.seed == 3


def test_different_seeds_give_different_spleens():
    volumes = [volume_mm3(cached(seed).label, SPLEEN) for seed in range(5)]
    assert len(set(volumes)) == 5
    assert max(volumes) / min(volumes) > 1.15  # shapes really vary, not just a voxel here and there
    masks = [arrays(cached(seed))[1] == SPLEEN for seed in (0, 1)]
    overlap = (masks[0] & masks[1]).sum() / max(masks[0].sum(), masks[1].sum())
    assert overlap < 0.9


@pytest.mark.parametrize(
    ("size", "spacing"),
    [((112, 96, 64), (3.0, 3.0, 3.0)), ((96, 80, 24), (0.8, 0.8, 2.5)), ((40, 36, 30), (7.0, 6.5, 5.0))],
)
@pytest.mark.parametrize("orientation", ["RAS", "oblique"])
def test_grid_types_and_shared_geometry(size, spacing, orientation):
    phantom = make_phantom(11, size=size, spacing=spacing, orientation=orientation)
    assert phantom.image.GetPixelID() == sitk.sitkInt16
    assert phantom.label.GetPixelID() == sitk.sitkUInt8
    assert phantom.image.GetSize() == size
    assert phantom.image.GetSpacing() == pytest.approx(spacing, abs=1e-12)
    assert geometry(phantom.label) == geometry(phantom.image)
    image, label = arrays(phantom)
    assert image.dtype == np.int16 and label.dtype == np.uint8
    assert image.shape == label.shape == size[::-1]
    # the grid is centred on the same patient point whatever the grid
    np.testing.assert_allclose(grid_centre(phantom.image), grid_centre(cached(11).image), atol=1e-6)


@pytest.mark.parametrize("orientation", [*ORIENTATIONS, "PIR"])
def test_nifti_axis_codes(tmp_path, orientation):
    phantom = make_phantom(5, size=(48, 40, 32), spacing=(6.0, 6.0, 6.0), orientation=orientation)
    image_path, label_path = write_phantom(phantom, tmp_path, extension=".nii")
    expected = tuple("RAS" if orientation == "oblique" else orientation)
    for path in (image_path, label_path):
        assert nib.aff2axcodes(nib.load(str(path)).affine) == expected
    direction = np.array(phantom.image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction @ direction.T, np.eye(3), atol=1e-9)
    if orientation == "oblique":
        rotation = direction @ np.diag([-1.0, -1.0, 1.0])  # undo RAS: what is left is the tilt
        assert np.linalg.det(rotation) == pytest.approx(1.0)
        angle = np.degrees(np.arccos((np.trace(rotation) - 1) / 2))
        assert 15 <= angle <= 25
        assert np.abs(direction - np.round(direction)).max() > 0.1  # not axis aligned
        axis = np.array(
            [rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0], rotation[1, 0] - rotation[0, 1]]
        )
        assert np.abs(axis / np.linalg.norm(axis)).min() > 0.2  # about a tilted axis


@pytest.mark.parametrize("seed", [0, 4])
def test_same_anatomy_in_every_orientation_and_spacing(seed):
    reference = cached(seed, orientation="LPS", **WIDE)
    ref_volume, ref_centre = volume_mm3(reference.label, SPLEEN), world_centroid(reference.label, SPLEEN)
    grids = [(o, WIDE["size"], WIDE["spacing"]) for o in ORIENTATIONS if o != "LPS"]
    grids += [("LPS", (150, 160, 80), (3.2, 3.0, 5.0)), ("PIR", (100, 80, 120), (4.0, 5.0, 4.0))]
    for orientation, size, spacing in grids:
        label = cached(seed, size, spacing, orientation).label
        assert volume_mm3(label, SPLEEN) == pytest.approx(ref_volume, rel=0.03), orientation
        shift = np.linalg.norm(world_centroid(label, SPLEEN) - ref_centre)
        assert shift < min(spacing), orientation


@pytest.mark.parametrize("orientation", ["RAS", "LPI", "oblique"])
@pytest.mark.parametrize("seed", range(4))
def test_spleen_left_posterior_liver_right(seed, orientation):
    phantom = cached(seed, orientation=orientation)
    image, _ = arrays(phantom)
    body = np.argwhere(image > -500).mean(axis=0)[::-1]
    body_centre = np.array(phantom.image.TransformContinuousIndexToPhysicalPoint(body.tolist()))
    spleen, liver = world_centroid(phantom.label, SPLEEN), world_centroid(phantom.label, LIVER)
    assert spleen[0] > body_centre[0] + 40  # LPS +x: the patient's left
    assert spleen[1] > body_centre[1] + 10  # LPS +y: posterior
    assert liver[0] < body_centre[0] - 20


def test_body_has_real_size_and_is_not_scaled_to_the_field_of_view():
    widths = []
    for size in ((130, 100, 64), (160, 140, 64)):  # 390 and 480 mm wide: both hold the whole body
        image, _ = arrays(cached(2, size=size, orientation="LPS", noise=0.0))
        row = image[size[2] // 2, size[1] // 2, :]  # left-right through the grid centre
        widths.append((row > -500).sum() * 3.0)
        depth = (image[size[2] // 2, :, size[0] // 2] > -500).sum() * 3.0
        assert 210 <= depth <= 280
    assert 290 <= widths[0] <= 370
    assert widths[0] == pytest.approx(widths[1], abs=3.0)


@pytest.mark.parametrize("seed", range(5))
def test_hounsfield_units(seed):
    image, label = arrays(cached(seed))
    assert 30 <= image[label == SPLEEN].mean() <= 150
    assert 40 <= image[label == LIVER].mean() <= 130
    assert image[label == VERTEBRA].mean() > 250
    assert np.percentile(image[label == VERTEBRA], 90) > 400
    for corner in (image[:4, :4, :4], image[-4:, -4:, -4:], image[:4, -4:, :4]):
        assert corner.mean() == pytest.approx(-1000, abs=20)  # air outside the body
    assert image.min() >= -1024 and image.max() <= 3071


@pytest.mark.parametrize("seed", range(5))
def test_subcutaneous_fat_under_the_skin(seed):
    image, label = arrays(cached(seed, orientation="LPS", noise=0.0))
    column = image[image.shape[0] // 2, :, image.shape[2] // 2]  # front (j = 0) to back, mid-line
    skin = int(np.argmax(column > -500))
    assert column[: skin - 1].max() < -900  # air up to the blurred skin voxel
    assert -130 < column[skin + 1] < -30  # fat, 3-6 mm under the skin
    fat = (label == 0) & (image > -150) & (image < -50)
    assert fat.sum() > 0.1 * (image > -500).sum()


def test_spleen_and_liver_contrast_vary_with_phase():
    differences = []
    for seed in range(10):
        image, label = arrays(cached(seed))
        differences.append(image[label == SPLEEN].mean() - image[label == LIVER].mean())
    differences = np.abs(differences)
    assert differences.max() < 70
    assert differences.min() < 10  # portal phase: close to the liver ...
    assert differences.max() > 15  # ... arterial phase: brighter


def test_contrast_override_keeps_the_anatomy():
    """Unenhanced (dose 0) to strong portal-venous (dose 1.6) scans of one patient: training for every phase."""
    seeded = cached(4, noise=0.0)
    plain = make_phantom(4, noise=0.0, contrast=(1.0, 0.0))
    portal = make_phantom(4, noise=0.0, contrast=(1.0, 1.6))
    np.testing.assert_array_equal(arrays(plain)[1], arrays(seeded)[1])
    np.testing.assert_array_equal(arrays(portal)[1], arrays(seeded)[1])
    spleen = {name: arrays(p)[0][arrays(p)[1] == SPLEEN].mean() for name, p in (("plain", plain), ("portal", portal))}
    liver = arrays(plain)[0][arrays(plain)[1] == LIVER].mean()
    assert 35 <= spleen["plain"] <= 55 and spleen["plain"] < liver  # unenhanced: spleen darker than the liver
    assert 125 <= spleen["portal"] <= 160


def test_noise_override():
    quiet, _ = arrays(cached(6, orientation="LPS", noise=0.0))
    loud, _ = arrays(cached(6, orientation="LPS", noise=25.0))
    body = quiet > -900
    assert np.std(loud[body].astype(float) - quiet[body]) == pytest.approx(25.0, rel=0.05)
    seeded, _ = arrays(cached(6, orientation="LPS"))
    assert 8 <= np.std(seeded[body].astype(float) - quiet[body]) <= 32


@pytest.mark.parametrize("seed", range(10))
def test_labels_are_known_and_spleen_is_whole_in_default_fov(seed):
    _, label = arrays(cached(seed))
    assert set(np.unique(label).tolist()) <= {0, *LABELS.values()}
    assert set(np.unique(label).tolist()) >= {0, SPLEEN, LIVER, VERTEBRA, LABELS["aorta"]}
    spleen = label == SPLEEN
    assert spleen.sum() > 0
    faces = [spleen[0], spleen[-1], spleen[:, 0], spleen[:, -1], spleen[:, :, 0], spleen[:, :, -1]]
    assert not any(face.any() for face in faces)  # the whole spleen is inside
    assert 80_000 <= volume_mm3(cached(seed).label, SPLEEN) <= 400_000


@pytest.mark.parametrize("seed", range(4))
def test_small_fov_keeps_most_of_the_spleen(seed):
    small = cached(seed, size=(64, 56, 40), spacing=(4.0, 4.0, 4.0))
    whole = volume_mm3(cached(seed, orientation="LPS", **WIDE).label, SPLEEN)
    assert volume_mm3(small.label, SPLEEN) > 0.7 * whole


@pytest.mark.parametrize("extension", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("orientation", ["LAS", "oblique"])
def test_write_phantom_round_trip(tmp_path, extension, orientation):
    phantom = cached(8, size=(56, 48, 20), spacing=(6.0, 6.0, 9.0), orientation=orientation)
    image_path, label_path = write_phantom(phantom, tmp_path / "out", stem="case8", extension=extension)
    assert (image_path.name, label_path.name) == (f"case8_image{extension}", f"case8_label{extension}")
    for original, path in ((phantom.image, image_path), (phantom.label, label_path)):
        loaded = sitk.ReadImage(str(path))
        assert loaded.GetPixelID() == original.GetPixelID()
        assert loaded.GetSize() == original.GetSize()
        np.testing.assert_allclose(loaded.GetSpacing(), original.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(loaded.GetOrigin(), original.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(loaded.GetDirection(), original.GetDirection(), atol=1e-5)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(loaded), sitk.GetArrayFromImage(original))


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="orientation"):
        make_phantom(0, size=(8, 8, 8), orientation="RAR")
    with pytest.raises(ValueError, match="size"):
        make_phantom(0, size=(8, 0, 8))
    with pytest.raises(ValueError, match="spacing"):
        make_phantom(0, size=(8, 8, 8), spacing=(1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="noise"):
        make_phantom(0, size=(8, 8, 8), noise=-1.0)
    with pytest.raises(ValueError, match="contrast"):
        make_phantom(0, size=(8, 8, 8), contrast=(0.5, 3.0))
    with pytest.raises(ValueError, match="extension"):
        write_phantom(cached(0, size=(8, 8, 8)), tmp_path, extension=".png")
