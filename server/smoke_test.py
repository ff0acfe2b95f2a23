"""The test inference every install runs before its commit marker is written: a small synthetic CT (the
phantoms module's patient, on a coarse grid) and the inputs each model type needs. Any failure is the
upload's fault (400), and nothing is installed."""

from __future__ import annotations

import logging

import SimpleITK as sitk

from aiaa_core.engines import Pacing
from aiaa_core.phantoms import make_phantom
from aiaa_core.vocabularies import SERVABLE_TYPES, ModelType

from .errors import ApiError, BadRequest
from .inference import run_model
from .served_model import ServedModel

__all__ = ["SMOKE_SIZE", "SMOKE_SPACING", "smoke_image", "smoke_inputs", "smoke_test"]

logger = logging.getLogger(__name__)

SMOKE_SIZE = (48, 40, 32)
SMOKE_SPACING = (2.0, 2.0, 3.0)
SMOKE_SEED = 0


def smoke_image() -> sitk.Image:
    """A small CT: the phantoms module's patient on a 48×40×32 grid (sitkInt16, Hounsfield units)."""
    return make_phantom(SMOKE_SEED, size=SMOKE_SIZE, spacing=SMOKE_SPACING).image


def smoke_inputs(model_type: str) -> dict:
    """What a request of `model_type` adds to the image: six extreme points, one click, or nothing."""
    lo = [n // 4 for n in SMOKE_SIZE]
    hi = [n - 1 - n // 4 for n in SMOKE_SIZE]
    mid = [n // 2 for n in SMOKE_SIZE]
    if model_type == ModelType.ANNOTATION:  # the six extreme points of a box inside the volume
        points = []
        for axis in range(3):
            for end in (lo, hi):
                point = list(mid)
                point[axis] = end[axis]
                points.append(point)
        return {"points": points}
    if model_type == ModelType.DEEPGROW:
        return {"foreground": [mid], "background": []}
    return {}


def smoke_test(model: ServedModel, device: str, pacing: Pacing | None = None) -> None:
    """Run the model once on the synthetic volume; any failure is the upload's fault (400)."""
    if model.type not in SERVABLE_TYPES:
        raise BadRequest(
            f"Model '{model.name}' has type '{model.type}'; this server runs {', '.join(SERVABLE_TYPES)} models."
        )
    try:
        run_model(model, smoke_image(), smoke_inputs(model.type), device=device, pacing=pacing)
    except ApiError:
        raise
    except Exception as exc:
        logger.warning("model '%s' failed its test inference", model.name, exc_info=True)
        while exc.__cause__ is not None:  # MONAI wraps the real error in "applying transform ..."
            exc = exc.__cause__
        detail = (str(exc).strip().splitlines() or [""])[0][:300]
        raise BadRequest(
            f"Model '{model.name}' loaded but failed a test inference on a small synthetic volume "
            f"({type(exc).__name__}: {detail}); nothing was installed."
        ) from None
