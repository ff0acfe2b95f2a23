"""Which predicted component is the spleen: a post-transform the app's segmentation task and exported
models share (`aiaa.transforms.KeepPlausibleSpleend` in an uploaded config), so it lives in the core."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.transforms import MapTransform
from scipy import ndimage

from .keys import data_key
from .tensors import bare

SPLEEN_ML = (20.0, 3000.0)
BODY_WINDOWED = 0.1  # windowed CT value above which a voxel is body (about -120 HU in the app's CT window)


class KeepPlausibleSpleend(MapTransform):
    """Keep, of the working-grid prediction's connected components, the one most likely to be the spleen;
    the others become background (`LogitsToInputGridd` then keeps it as the largest).

    The largest component alone is not enough: a false positive (a bowel loop, the stomach wall, a kidney)
    can outgrow a weakly predicted spleen. Plausible components have a spleen's volume (`SPLEEN_ML`), their
    centre inside the trunk (not in an arm beside it) and on the patient's left of the trunk's centre (RAS
    world x below it); the one with the most confidence
    (summed positive score) wins. Without a plausible one, the most confident component is kept.
    """

    def __init__(self, keys="pred", ref_image: str = "image"):
        super().__init__(keys)
        self.ref_image = data_key(ref_image, "ref_image")

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        image = d[self.ref_image]
        affine = np.asarray(torch.as_tensor(image.affine), dtype=float)
        body = bare(image)[0].numpy() > BODY_WINDOWED
        for key in self.key_iterator(d):
            logits = bare(d[key]).float()
            score = (logits[1:].max(0).values - logits[0]).numpy()
            keep = plausible_spleen(score, body, affine)
            if keep is not None:
                logits = logits.clone()
                logits[0][torch.from_numpy(~keep) & (torch.from_numpy(score) > 0)] = logits[1:].max(0).values.max() + 1
                d[key] = logits
        return d


def trunk_of(body: np.ndarray) -> np.ndarray:
    """The largest body part (not an arm beside it, not the table), its axial slices' holes (lungs, bowel
    gas) filled: where an organ's centre can lie."""
    parts, count = ndimage.label(body)
    if count == 0:
        return body
    trunk = parts == np.argmax(np.bincount(parts.ravel())[1:]) + 1
    return ndimage.binary_fill_holes(trunk, structure=np.ones((3, 3, 1), dtype=bool))


def plausible_spleen(score: np.ndarray, body: np.ndarray, affine: np.ndarray) -> np.ndarray | None:
    """The component of `score > 0` to keep (bool mask), or None when there is at most one component."""
    components, count = ndimage.label(score > 0, structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return None
    index = np.arange(1, count + 1)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    volume = ndimage.sum_labels(np.ones_like(score), components, index) * voxel_ml
    confidence = ndimage.sum_labels(np.clip(score, 0, None), components, index)
    centres = np.asarray(ndimage.center_of_mass(np.ones_like(score), components, index)).reshape(-1, 3)
    world_x = centres @ affine[0, :3] + affine[0, 3]
    trunk = trunk_of(body)
    trunk_voxels = np.argwhere(trunk)
    body_x = float((trunk_voxels.mean(0) @ affine[0, :3]) + affine[0, 3]) if trunk_voxels.size else np.inf
    centre_voxels = np.clip(np.round(centres).astype(int), 0, np.asarray(score.shape) - 1)
    in_trunk = trunk[tuple(centre_voxels.T)]
    plausible = (volume >= SPLEEN_ML[0]) & (volume <= SPLEEN_ML[1]) & (world_x < body_x) & in_trunk
    ranked = np.where(plausible, confidence, confidence - confidence.max() - 1.0)
    return components == index[int(np.argmax(ranked))]
