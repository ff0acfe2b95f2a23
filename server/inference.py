"""Run a served model's task on a decoded image and describe the resulting mask.

The task is called through MONAI Label's own entry point (`BasicInferTask.__call__` with
`skip_writer`), so the app's pre-transforms, inferer, inversion and post-transforms run unchanged;
the server only supplies the decoded image and writes the mask on the input grid itself.
"""

from __future__ import annotations

import time

import numpy as np
import SimpleITK as sitk

from .imageio import to_metatensor
from .registry import ServedModel


def run_model(model: ServedModel, image: sitk.Image, params: dict, device: str = "cpu") -> tuple[np.ndarray, dict]:
    """Infer; return the mask in [i, j, k] order on the image's grid, and the result params."""
    started = time.perf_counter()
    request = {**params, "image": to_metatensor(image), "skip_writer": True, "device": device}
    _, data = model.task(request)
    mask = np.asarray(data[model.task.output_label_key])
    if mask.ndim == 4:
        mask = mask[0]
    if mask.shape != tuple(image.GetSize()):
        raise RuntimeError(f"model '{model.name}' returned a {mask.shape} mask for a {image.GetSize()} image")
    result = {**data.get(model.task.output_json_key, {}), **describe_mask(mask)}
    result["label_names"] = {name: i + 1 for i, name in enumerate(model.labels)}
    result["latencies"] = {"infer": round(time.perf_counter() - started, 3)}
    return mask, result


def describe_mask(mask: np.ndarray) -> dict:
    """The six extreme points and the bounding box of the foreground, as [i, j, k] voxel indices."""
    foreground = np.argwhere(mask > 0)
    if foreground.size == 0:
        return {"points": [], "bbox": []}
    points = []
    for axis in range(3):
        for pick in (np.argmin, np.argmax):
            points.append([int(v) for v in foreground[pick(foreground[:, axis])]])
    return {
        "points": points,
        "bbox": [[int(v) for v in foreground.min(0)], [int(v) for v in foreground.max(0)]],
    }
