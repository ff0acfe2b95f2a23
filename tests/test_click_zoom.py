"""The click models' field of view: the zoom-out (when the object reaches the crop's border, infer again
on a larger crop), deepgrow's grown intensity region and the extreme points' box fit.

The network is replaced by a threshold (foreground where the CT channel is bright), so what the task
returns is decided by its crops alone: a long bright bar clicked in its middle is whole only if the
crop grew to hold it.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

from aiaa_core.box_fit import fit_to_box, reaches_every_face
from aiaa_core.box_region import grow_in_box
from aiaa_core.click_region import accept_region, grow_region
from aiaa_core.evaluation import dice
from aiaa_core.transforms import AIR_HU, CropAroundPointsd, resize_logits, resize_region
from aiaa_core.volumes import to_array
from lib.infers import DeepGrow3D, ExtremePoints
from lib.infers.interactive import touched_faces, zoomed_box
from server.inference import run_model
from server.registry import ServedModel

SPACING = (2.0, 2.0, 2.0)
SHAPE = (240, 120, 100)  # 480 × 240 × 200 mm


class Threshold(torch.nn.Module):
    """Stand-in network: logits (background 0, object ±) from the windowed CT channel alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x[:, :1] - 0.5) * 20.0
        return torch.cat([torch.zeros_like(score), score], dim=1)


def bar_image() -> tuple[sitk.Image, np.ndarray]:
    """Soft tissue (40 HU) holding a bright bar (400 HU) 360 mm long in i, 40 mm across."""
    hu = np.full(SHAPE, 40, dtype=np.int16)
    bar = np.zeros(SHAPE, dtype=bool)
    bar[30:210, 50:70, 40:60] = True
    hu[bar] = 400
    image = sitk.GetImageFromArray(hu.T.copy())
    image.SetSpacing(SPACING)
    return image, bar


def served(task_class, tmp_path) -> ServedModel:
    weights = tmp_path / f"{task_class.__name__}.pt"
    torch.save(Threshold().state_dict(), weights)
    task = task_class(path=str(weights), network=Threshold(), engine="torch")
    return ServedModel(name=task_class.__name__, task=task, source="test")


def test_zoomed_box_grows_away_from_the_touched_face():
    touched = np.zeros((3, 2), dtype=bool)
    touched[0, 1] = True  # the object leaves the box at high i
    start, end = zoomed_box([50, 50, 50], [100, 100, 100], [400, 400, 400], touched, 2.0)
    assert end[0] - start[0] == 100 and start[0] == 45  # kept a tenth of the old size below the box
    assert (start[1], end[1]) == (25, 125)  # untouched axes grow about their centre


def test_zoomed_box_stops_at_the_image_edge():
    touched = np.zeros((3, 2), dtype=bool)
    touched[2, 0] = True  # touched at k = 0, which is also the image's edge: nothing to see beyond it
    assert zoomed_box([10, 10, 0], [60, 60, 40], [70, 70, 40], touched, 2.0) is None


def test_touched_faces_needs_more_than_a_voxel():
    scores = -torch.ones(20, 20, 20)
    scores[5:15, 5:15, 0:10] = 1  # reaches the k = 0 face over 100 of its 400 voxels
    scores[19, 10, 10] = 1  # a single voxel on the i = 19 face
    touched = touched_faces(scores)
    assert touched[2, 0] and touched.sum() == 1


def test_one_click_segments_an_object_larger_than_the_first_crop(tmp_path):
    image, bar = bar_image()
    model = served(DeepGrow3D, tmp_path)
    model.task.max_zoom_outs, model.task.region_margin_mm = 0, 0.0  # the network's first crop alone
    first, first_result = run_model(model, image, {"foreground": [[120, 60, 50]], "background": []})
    model.task.max_zoom_outs, model.task.region_margin_mm = DeepGrow3D.max_zoom_outs, DeepGrow3D.region_margin_mm
    mask, result = run_model(model, image, {"foreground": [[120, 60, 50]], "background": []})
    (i0, i1), _, _ = first_result["crop"]
    assert (i1 - i0) * SPACING[0] < 200  # the first crop holds less than the bar's 360 mm
    assert dice(first, bar) < 0.7
    (i0, i1), _, _ = result["crop"]
    assert i0 <= 30 and i1 >= 210  # zoomed out to the whole bar
    assert dice(mask, bar) > 0.9  # on a coarser crop (up to 6 mm voxels across a 40 mm bar)


def test_extreme_points_do_not_zoom(tmp_path):
    image, bar = bar_image()
    points = [[30, 60, 50], [209, 60, 50], [120, 50, 50], [120, 69, 50], [120, 60, 40], [120, 60, 59]]
    mask, result = run_model(served(ExtremePoints, tmp_path), image, {"points": points})
    (i0, i1), _, _ = result["crop"]
    assert i0 <= 30 and i1 >= 210 and (i1 - i0) * SPACING[0] < 420  # the points' box and its padding
    assert dice(mask, bar) > 0.95
    assert to_array(image).shape == mask.shape


def test_a_crop_beyond_a_thin_scan_keeps_its_size_in_mm():
    """20 slices of 2 mm: the 128 mm crop is padded with air along k, not stretched from 40 mm."""
    affine = torch.diag(torch.tensor([1.0, 1.0, 2.0, 1.0]))
    image = MetaTensor(torch.full((1, 100, 100, 20), 40.0), affine=affine)
    crop = CropAroundPointsd(
        keys="image",
        box_points=("foreground",),
        points_keys=("foreground",),
        roi_size=(80, 80, 80),
        padding_mm=24.0,
        min_size_mm=128.0,
        pad_beyond_image=True,
    )
    data = crop({"image": image, "foreground": [[50, 50, 10]]})
    (_, _, k0), (_, _, k1) = data["crop_box"]
    assert k1 - k0 == 64 and k0 < 0 and k1 > 20
    planes = data["image"][0].amax((0, 1))
    tissue = int((planes > 0).sum())
    assert abs(tissue - 80 * 20 / 64) <= 2  # the scan's 40 mm fill a third of the crop's 128 mm
    assert planes[0] == AIR_HU and planes[-1] == AIR_HU


def test_one_click_on_a_thin_scan(tmp_path):
    hu = np.full((160, 160, 20), 40, dtype=np.int16)
    bar = np.zeros(hu.shape, dtype=bool)
    bar[40:120, 60:100, :] = True  # cut by both ends of the scan, like the organs of a 20-slice series
    hu[bar] = 400
    image = sitk.GetImageFromArray(hu.T.copy())
    image.SetSpacing((1.0, 1.0, 2.0))
    mask, result = run_model(served(DeepGrow3D, tmp_path), image, {"foreground": [[80, 80, 10]], "background": []})
    assert result["crop"][2] == [0, 20]  # the reported crop is the part inside the image
    assert mask.shape == hu.shape
    assert dice(mask, bar) > 0.9


def test_pasting_resamples_only_around_the_object_as_a_full_resize_would():
    """A zoomed-out box can hold 10⁸ voxels: the paste resamples the object's region alone, the same way."""
    torch.manual_seed(0)
    score = torch.randn(80, 80, 80)
    size = (123, 97, 211)
    full = resize_logits(score[None], size)[0]
    part = resize_region(score, size, [10, 0, 50], [100, 97, 200])
    assert torch.allclose(full[10:100, :, 50:200], part, atol=1e-4)


# --- the grown intensity region (deepgrow) and the extreme points' box fit ------------------------------


class Blob(torch.nn.Module):
    """Stand-in network that under-segments: a ball of about 12 mm radius around the foreground click."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x[:, 1:2] - 0.001  # the click's Gaussian heatmap (σ 2 crop voxels of 1.6 mm)
        return torch.cat([torch.zeros_like(score), score], dim=1)


def organ_image(noise_hu: float = 10.0) -> tuple[sitk.Image, np.ndarray]:
    """A 60 HU organ 36 × 36 × 32 mm in 0 HU tissue (2 mm voxels), with Gaussian noise."""
    rng = np.random.default_rng(0)
    hu = rng.normal(0.0, noise_hu, SHAPE).astype(np.float32)
    organ = np.zeros(SHAPE, dtype=bool)
    organ[101:119, 51:69, 41:57] = True
    hu[organ] += 60.0
    image = sitk.GetImageFromArray(np.round(hu).astype(np.int16).T.copy())
    image.SetSpacing(SPACING)
    return image, organ


def test_the_grown_region_completes_an_under_segmented_organ(tmp_path):
    image, organ = organ_image()
    weights = tmp_path / "blob.pt"
    torch.save(Blob().state_dict(), weights)
    model = ServedModel(name="blob", task=DeepGrow3D(path=str(weights), network=Blob(), engine="torch"), source="test")
    click = {"foreground": [[110, 60, 49]], "background": []}
    model.task.region_margin_mm = 0.0
    network_only, _ = run_model(model, image, click)
    model.task.region_margin_mm = DeepGrow3D.region_margin_mm
    grown, _ = run_model(model, image, click)
    assert dice(network_only, organ) < 0.6
    assert dice(grown, organ) > 0.85


def test_no_region_on_textured_tissue():
    rng = np.random.default_rng(1)
    hu = rng.choice([-100.0, 200.0], size=(40, 40, 40))  # a gas-and-contrast stomach, say
    assert grow_region(hu, [[20, 20, 20]]) is None


def test_a_background_click_cuts_a_leak_at_its_bridge():
    hu = np.zeros((60, 30, 30), dtype=np.float32)
    hu[5:25, 5:25, 5:25] = 60.0  # the object
    hu[35:55, 5:25, 5:25] = 60.0  # a neighbour of the same intensity
    hu[25:35, 13:17, 13:17] = 60.0  # a 4-voxel bridge between them
    leaked = grow_region(hu, [[15, 15, 15]])
    cut = grow_region(hu, [[15, 15, 15]], [[45, 15, 15]])
    assert leaked[45, 15, 15] and leaked[15, 15, 15]
    assert cut[15, 15, 15] and not cut[45, 15, 15]
    assert cut[5:25, 5:25, 5:25].mean() > 0.95 and not cut[35:55].any()


def test_region_accepted_only_when_it_agrees_and_adds():
    network = np.zeros((40, 40, 40), dtype=bool)
    network[15:25, 15:25, 15:25] = True
    larger = np.zeros_like(network)
    larger[10:30, 10:30, 10:30] = True  # holds the network's mask, 8× its size
    elsewhere = np.roll(larger, 20, axis=0)
    assert accept_region(larger, network)
    assert not accept_region(network.copy(), network)  # adds nothing: the network's own mask is kept
    assert not accept_region(elsewhere & ~network, network)  # another object
    assert not accept_region(np.ones_like(network), network)  # a leak: 64× the network's mask


def test_extreme_points_mask_fitted_to_their_box():
    score = -torch.ones(40, 40, 40)
    score[12:28, 12:28, 12:28] = 1.0  # the object, confidently
    score[10:30, 10:30, 10:30] += 0.8  # its rim, just below the threshold: the points are at 10 and 29
    score[32:38, 20, 20] = 3.0  # a leak beyond the points' box
    points = np.array([[10, 20, 20], [29, 20, 20], [20, 10, 20], [20, 29, 20], [20, 20, 10], [20, 20, 29]])
    logits = torch.stack([torch.zeros_like(score), score])
    fitted = fit_to_box(logits, points)
    mask = (fitted[1] - fitted[0]) > 0
    assert mask[10:30, 10:30, 10:30].all()  # the threshold was lowered until the mask reached every point
    assert not mask[31:].any()  # nothing beyond the box
    assert reaches_every_face(mask[9:31, 9:31, 9:31])


def core_and_points(hu: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Logits of a network that found only the core of the object at [10, 30)³, and its six extreme points."""
    score = -torch.ones(hu.shape)
    score[13:27, 13:27, 13:27] = 1.0  # a third of it
    points = np.array([[10, 20, 20], [29, 20, 20], [20, 10, 20], [20, 29, 20], [20, 20, 10], [20, 20, 29]])
    return torch.stack([torch.zeros_like(score), score]), points


def test_extreme_points_region_completes_the_core_within_the_box():
    hu = np.full((40, 40, 40), -100.0, dtype=np.float32)  # fat
    hu[10:30, 10:30, 10:30] = 60.0  # the object, homogeneous
    logits, points = core_and_points(hu)
    mask = (lambda out: (out[1] - out[0]) > 0)(grow_in_box(logits, hu, points))
    assert mask[10:30, 10:30, 10:30].float().mean() > 0.9  # the object (its edges aside), not the core (0.34)
    assert mask.sum() < 1.2 * 20**3  # and little else


def test_extreme_points_region_completes_a_mask_a_little_short_of_the_object():
    """Inside the points' box the region is taken even when barely larger than the network's mask (deepgrow's
    `MIN_GROWTH` of 1.3 would refuse this 1.2× region): the box, not the growth, bounds a leak."""
    hu = np.full((40, 40, 40), -100.0, dtype=np.float32)
    hu[10:30, 10:30, 10:30] = 60.0
    score = -torch.ones(hu.shape)
    score[10:30, 10:30, 10:27] = 1.0  # the network stops three voxels short along k
    points = np.array([[10, 20, 20], [29, 20, 20], [20, 10, 20], [20, 29, 20], [20, 20, 10], [20, 20, 29]])
    logits = torch.stack([torch.zeros_like(score), score])
    network = (score > 0).numpy()
    region = np.zeros_like(network)
    region[10:30, 10:30, 10:30] = True
    assert not accept_region(region, network)  # deepgrow's rule: too little growth to be worth it
    mask = (lambda out: (out[1] - out[0]) > 0)(grow_in_box(logits, hu, points))
    assert mask[10:30, 10:30, 27:30].float().mean() > 0.7  # completed towards the box's far face (network: 0)
    assert mask.sum() < 1.2 * 20**3


def test_extreme_points_region_rejected_when_it_leaks_beyond_the_box():
    hu = np.full((40, 40, 40), -100.0, dtype=np.float32)
    hu[10:30, 10:30, 10:30] = 60.0
    hu[10:40, 28:40, 0:40] = 60.0  # a neighbour of the same intensity, touching it and running out of the box
    logits, points = core_and_points(hu)
    assert torch.equal(grow_in_box(logits, hu, points), logits)  # the network's mask, as it was


def test_corrective_clicks_keep_the_region_the_first_click_took(tmp_path, monkeypatch):
    """More foreground clicks grow the under-segmenting network's mask until, judged afresh, the region
    would no longer add enough to be taken: the first click's choice holds, so the mask does not collapse."""
    image, organ = organ_image()
    weights = tmp_path / "blob.pt"
    torch.save(Blob().state_dict(), weights)
    model = ServedModel(name="blob", task=DeepGrow3D(path=str(weights), network=Blob(), engine="torch"), source="test")
    corners = [[104, 54, 44], [116, 66, 54], [104, 66, 44], [116, 54, 54], [104, 54, 54], [116, 66, 44]]
    clicks = {"foreground": [[110, 60, 49], *corners], "background": []}
    one, _ = run_model(model, image, {"foreground": clicks["foreground"][:1], "background": []})
    seven, _ = run_model(model, image, clicks)
    assert dice(one, organ) > 0.85 and dice(seven, organ) > 0.78  # the balls round the clicks stick out a little
    monkeypatch.setattr(DeepGrow3D, "first_click_takes_region", lambda self, *args: None)  # judged afresh
    afresh, _ = run_model(model, image, clicks)
    assert dice(afresh, organ) < 0.7  # the network's seven balls alone


def test_first_click_choices_are_kept_per_image_object():
    from lib.infers.deepgrow_3d import FirstClickChoices

    choices = FirstClickChoices(size=2)
    image, other = MetaTensor(torch.zeros(1, 4, 4, 4)), MetaTensor(torch.zeros(1, 4, 4, 4))
    first = {"image": image, "foreground": [[1, 2, 3], [0, 0, 0]]}
    assert choices.get(first) is None
    choices.remember(first, True)
    assert choices.get({"image": image, "foreground": [[1, 2, 3]]}) is True  # later clicks: same first click
    assert choices.get({"image": other, "foreground": [[1, 2, 3]]}) is None  # another image
    assert choices.get({"image": image, "foreground": [[3, 2, 1]]}) is None  # another object
    choices.remember({"image": other, "foreground": [[0, 0, 0]]}, False)
    choices.remember({"image": other, "foreground": [[1, 1, 1]]}, False)
    assert choices.get(first) is None  # the oldest dropped past `size`
