"""DeepGrow 3D: foreground/background clicks → a binary mask of the clicked object (class-agnostic)."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
from monai.transforms import ScaleIntensityRange
from monailabel.interfaces.tasks.infer_v2 import InferType

from aiaa_core.click_region import accept_region, grow_region, split_off
from aiaa_core.transforms import ZOOM_BOX, CropAroundPointsd, TrimToTissued, bare

from .interactive import CT_WINDOW, UNCROPPED, InteractiveTask

REGION_SCORE = 4.0  # the logit margin given to the grown region's inside (and minus it outside)
REGION_VOXEL_MM = 3.2  # the region crop's voxel size where it fits in REGION_MAX_VOXELS
REGION_MAX_VOXELS = 112  # per axis: bounds the region grow's cost
MIN_ADDED = 0.1  # a region adding less than this share of the network's mask is left out (no extra pass)


class DeepGrow3D(InteractiveTask):
    """The crop covers the foreground clicks with `padding_mm`, at least `min_size_mm` wide (padded with
    air beyond the image), and zooms out while the object reaches its border (`InteractiveTask`).

    Background clicks do not widen it: with the committed weights a far background click made the crop,
    and the object in it, coarser (held-out LPS phantom 0.851 → 0.809 after 5 clicks); on the real CTs
    the corrective background clicks lie next to the object, inside the crop, either way.

    After the network, an intensity region grown from the clicks on a crop `region_margin_mm` wider on
    each side is added to its mask where the two agree (`aiaa_core.click_region`): the network under-segments large
    organs. The region crop has `REGION_VOXEL_MM` voxels (coarser only past `REGION_MAX_VOXELS`), so its
    resolution does not fall as clicks spread the network's crop. The mask is then trimmed to the tissue of
    its core (`aiaa_core.tissue_trim`), on whichever of the two crops it lies.
    """

    task_type = InferType.DEEPGROW
    summary = "DeepGrow 3D: click on an object to segment it"
    box_points = ("foreground",)
    points_keys = ("foreground", "background")
    crop_size = (80, 80, 80)
    padding_mm = 24.0
    min_size_mm = 128.0
    sigma = 2.0
    pad_beyond_image = True
    region_margin_mm = 64.0  # 0 turns the region grow off

    @property
    def model_info(self) -> dict:
        return {"deepgrow": "3D"}

    def __init__(self, path, network, **kwargs):
        super().__init__(path, network, **kwargs)
        self.first_clicks = FirstClickChoices()

    def post_transforms(self, data=None):
        # Trimmed to the clicked tissue (`aiaa_core.tissue_trim`), on the crop, so exports run it too.
        return [TrimToTissued(keys="pred", image_key="image", window=CT_WINDOW), *super().post_transforms(data)]

    def run_inferer(self, data, convert_to_batch=True, device="cuda"):
        data = super().run_inferer(data, convert_to_batch, device)
        uncropped = data.get(UNCROPPED, {})
        if self.region_margin_mm <= 0 or not uncropped.get("foreground"):
            return data
        first_click = len(uncropped["foreground"]) == 1 and not uncropped.get("background")
        # A zoom-out means the network saw the object reach its border and followed it: its crop fits.
        if not data.get("zoom_outs"):
            consult = None if first_click else lambda: self.first_click_takes_region(data, convert_to_batch, device)
            data = self.refine_with_region(data, consult)
        if first_click:
            self.first_clicks.remember(uncropped, bool(data.get("region_grown")))
        return data

    def first_click_takes_region(self, data: dict, convert_to_batch=True, device="cuda") -> bool:
        """Whether the object's first click took the grown region (remembered per session image by
        `FirstClickChoices`; otherwise found again by one more network pass on the first click alone)."""
        uncropped = data[UNCROPPED]
        remembered = self.first_clicks.get(uncropped)
        if remembered is not None:
            return remembered
        first = {key: value for key, value in data.items() if key not in (ZOOM_BOX, "zoom_outs")}
        first.update(uncropped)
        first["foreground"], first["background"] = list(uncropped["foreground"][:1]), []
        for transform in self.point_dependent_transforms():
            first = transform(first)
        first = InteractiveTask.run_inferer(self, first, convert_to_batch, device)
        if first.get("zoom_outs"):
            self.first_clicks.remember(uncropped, False)
            return False
        region, network, _ = self.region_and_network(first)
        taken = accept_region(region, network)
        self.first_clicks.remember(uncropped, taken)
        return taken

    def region_and_network(self, data: dict) -> tuple[np.ndarray | None, np.ndarray, dict]:
        """The region grown from the clicks on a crop `region_margin_mm` wider than the network's, the
        network's mask on that crop, and the crop."""
        start, end = (np.asarray(v, dtype=int) for v in data["crop_box"])
        spacing = np.asarray(data[UNCROPPED]["image"].pixdim, dtype=float)[:3]
        margin = np.ceil(self.region_margin_mm / spacing).astype(int)
        box_start, size = start - margin, end - start + 2 * margin
        roi = np.clip(np.round(size * spacing / REGION_VOXEL_MM), 16, REGION_MAX_VOXELS).astype(int)
        crop = CropAroundPointsd(
            keys="image",
            box_points=("foreground",),
            points_keys=self.points_keys,
            roi_size=roi.tolist(),
            padding_mm=self.padding_mm,
            pad_beyond_image=True,
            oversampling=1,  # read at about the region crop's own resolution: it is smoothed anyway
        )({**data[UNCROPPED], ZOOM_BOX: (box_start.tolist(), (box_start + size).tolist())})
        logits = bare(data[self.output_label_key]).float()
        score = logits[1] - logits[0] if logits.shape[0] == 2 else logits[0]
        network = resample_nearest(score.numpy() > 0, start, end, box_start, box_start + size, roi)
        region = grow_region(bare(crop["image"])[0].numpy(), crop["foreground"], crop["background"])
        return region, network, crop

    def refine_with_region(self, data: dict, first_click_took: Callable[[], bool] | None = None) -> dict:
        """The network's crop result, or its union with the region grown on a wider crop.

        A region that would add to the network's mask is taken when it agrees with it now
        (`accept_region`) or, on a corrective click, when the object's first click took it
        (`first_click_took`): corrections never switch it off. Judged afresh only, a corrective click that
        moved the network's mask a little refused it, and the mask jumped between the region and the
        network's blob (real-CT livers 0.91 → 0.44 → 0.91 on successive clicks). Asked only then, and only
        when the region adds at least `MIN_ADDED` of the mask: most clicks cost no extra network pass.
        """
        region, network, crop = self.region_and_network(data)
        if region is None or not network.any() or (region & ~network).sum() < MIN_ADDED * network.sum():
            return data  # it would add little: not worth an extra network pass to ask the first click
        if not accept_region(region, network) and not (first_click_took and first_click_took()):
            return data
        region = region | network  # added to the network's mask
        inside = [p for p in crop["background"] if region[tuple(p)]]
        if inside:  # a background click on the union: cut it there too, as the region was cut
            region = split_off(region, crop["foreground"], inside)
        refined = torch.from_numpy(np.where(region, REGION_SCORE, -REGION_SCORE).astype(np.float32))
        data[self.output_label_key] = torch.stack([torch.zeros_like(refined), refined])
        data["crop_box"] = crop["crop_box"]
        # The crop the result now lies on, windowed as the network's input was (the trim reads its HU back).
        data["image"] = ScaleIntensityRange(*CT_WINDOW, b_min=0.0, b_max=1.0, clip=True)(bare(crop["image"]).float())
        data["region_grown"] = True
        return data


class FirstClickChoices:
    """Recent objects' first-click region choices, keyed by the request's image object (a session's
    cached pre-processing: the same object on every click) and the first click. A weak reference makes
    sure a reused object id is not taken for the old image. Bounded; safe across request threads."""

    def __init__(self, size: int = 64):
        self.size = size
        self._held: OrderedDict[tuple, tuple[weakref.ref, bool]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(uncropped: dict) -> tuple:
        return id(uncropped["image"]), tuple(int(c) for c in uncropped["foreground"][0])

    def get(self, uncropped: dict) -> bool | None:
        with self._lock:
            held = self._held.get(self._key(uncropped))
        return held[1] if held is not None and held[0]() is uncropped["image"] else None

    def remember(self, uncropped: dict, taken: bool) -> None:
        with self._lock:
            self._held[self._key(uncropped)] = (weakref.ref(uncropped["image"]), taken)
            while len(self._held) > self.size:
                self._held.popitem(last=False)


def resample_nearest(mask: np.ndarray, start, end, new_start, new_end, shape) -> np.ndarray:
    """`mask`, a crop of box [start, end) resampled to its shape, as seen on a `shape` crop of box
    [new_start, new_end) (nearest voxel; False outside the old box)."""
    axes = []
    for a in range(3):
        centres = new_start[a] + (np.arange(shape[a]) + 0.5) * (new_end[a] - new_start[a]) / shape[a] - 0.5
        index = np.floor((centres - start[a] + 0.5) * mask.shape[a] / (end[a] - start[a])).astype(int)
        axes.append(index)
    valid = [(i >= 0) & (i < n) for i, n in zip(axes, mask.shape, strict=True)]
    clipped = [np.clip(i, 0, n - 1) for i, n in zip(axes, mask.shape, strict=True)]
    out = mask[np.ix_(*clipped)]
    return out & valid[0][:, None, None] & valid[1][None, :, None] & valid[2][None, None, :]
