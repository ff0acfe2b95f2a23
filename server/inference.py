"""Run a served model's task on a decoded image and describe the resulting mask.

The task is called through MONAI Label's own entry point (`BasicInferTask.__call__` with
`skip_writer`), so the app's pre-transforms, inferer, inversion and post-transforms run unchanged;
the server only supplies the decoded image and writes the mask on the input grid itself.

With a session, what depends on the image alone is computed once and kept in the session: the
channel-first MetaTensor, and for tasks that offer `prepare(image) -> dict` (the app's tasks) their
point-independent pre-processing, handed back under `request[PREPARED]`.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import SimpleITK as sitk

from aiaa_core.engines import PACING, Pacing
from aiaa_core.keys import PRED_BOX, PREPARED
from aiaa_core.mask_geometry import extreme_points, occupied_range
from aiaa_core.vocabularies import ModelType
from aiaa_core.volumes import to_metatensor

from .served_model import ServedModel
from .sessions import Session

logger = logging.getLogger(__name__)


def image_inputs(model: ServedModel, image: sitk.Image, session: Session | None = None) -> dict:
    """The request entries for the image: the MetaTensor and, from a session, the prepared pre-processing."""
    if session is None:
        return {"image": to_metatensor(image)}
    metatensor = session.cached("metatensor", lambda: to_metatensor(image))
    inputs = {"image": metatensor}
    prepare = getattr(model.task, "prepare", None)
    if callable(prepare):
        inputs[PREPARED] = session.cached(("prepared", model.name, id(model.task)), lambda: prepare(metatensor))
    return inputs


def run_model(
    model: ServedModel,
    image: sitk.Image,
    params: dict,
    device: str = "cpu",
    session: Session | None = None,
    pacing: Pacing | None = None,
) -> tuple[np.ndarray, dict]:
    """Infer; return the mask in [i, j, k] order on the image's grid, and the result params.

    `pacing` (the scheduler slot's) is checked in with between steps and handed to the task's engine."""
    pacing = pacing or Pacing()
    started = time.perf_counter()
    inputs = image_inputs(model, image, session)
    prepared = time.perf_counter()
    pacing.checkpoint()
    _, data = model.task({**params, **inputs, "skip_writer": True, "device": device, PACING: pacing})
    inferred = time.perf_counter()
    mask = np.asarray(data[model.task.output_label_key])
    if mask.ndim == 4:
        mask = mask[0]
    if mask.shape != tuple(image.GetSize()):
        raise RuntimeError(f"model '{model.name}' returned a {mask.shape} mask for a {image.GetSize()} image")
    result = {**data.get(model.task.output_json_key, {}), **describe_mask(mask, data.get(PRED_BOX))}
    result["label_names"] = label_names(model)
    result["latencies"] = {
        "prepare": round(prepared - started, 4),
        "infer": round(inferred - prepared, 4),
        "describe": round(time.perf_counter() - inferred, 4),
    }
    pacing.checkpoint()
    return mask, result


def label_names(model: ServedModel) -> dict[str, int]:
    """{name: value} of the mask. A class-agnostic click or annotation model lists every structure it was
    trained on, yet its mask is binary (1 = the object pointed at): naming value 1 after all of them would
    mislead, so such a reply names nothing."""
    labels = model.labels
    if model.type != ModelType.SEGMENTATION and len(labels) > 1:
        return {}
    return {name: i + 1 for i, name in enumerate(labels)}


def warm_up(models: list[ServedModel], device: str = "cpu") -> None:
    """Build each task's engine and infer once (tasks with `warm_up`), so no request pays for it."""
    for model in models:
        if callable(getattr(model.task, "warm_up", None)):
            started = time.perf_counter()
            try:
                model.task.warm_up(device)
            except Exception:  # the model's first request will report it
                logger.exception("warming up '%s' failed", model.name)
                continue
            logger.info("'%s' ready on %s in %.1f s", model.name, model.task.engine, time.perf_counter() - started)


def describe_mask(mask: np.ndarray, box: list | None = None) -> dict:
    """The six extreme points and the bounding box of the foreground, as [i, j, k] voxel indices.

    `box` ([[i0, i1], [j0, j1], [k0, k1]]) is where the task pasted the object: only that part is searched.
    The bounding box comes from the projections on the axes, each extreme point from its boundary slice.
    """
    offset = np.zeros(mask.ndim, dtype=int)
    if box is not None:
        offset = np.array([b[0] for b in box], dtype=int)
        mask = mask[tuple(slice(b[0], b[1]) for b in box)]
    extent = occupied_range(mask)
    if extent is None:
        return {"points": [], "bbox": []}
    low, high = extent
    points = [[int(v) for v in np.add(point, offset)] for point in extreme_points(mask)]
    return {"points": points, "bbox": [[int(v) for v in low + offset], [int(v) for v in high + offset]]}
