"""The click models' zoom-out: when the object reaches the crop's border, infer again on a larger crop.

The network is replaced by a threshold (foreground where the CT channel is bright), so what the task
returns is decided by its crops alone: a long bright bar clicked in its middle is whole only if the
crop grew to hold it.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

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
