"""Clara v2/v3 (TensorFlow era) transform names, mapped to MONAI and the server's transforms.

Only the common names are mapped; any other name is refused with a 400 that names it. v3 keys data by
`fields` (the network output is usually `model`); extreme-point models crop around the clicked points,
so their crop, heatmap channel and paste-back become the app's `CropAroundPointsd`, `PointHeatmapsd`
and `PasteCropd`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from monai.transforms import (
    AsDiscreted,
    KeepLargestConnectedComponentd,
    NormalizeIntensityd,
    ScaleIntensityRanged,
    Spacingd,
)

from ..errors import BadRequest
from .adapters import LoadServerImaged, Restored, app_transforms
from .names import config_steps

DEFAULT_ROI = [128, 128, 128]
DEFAULT_PADDING_MM = 20.0


@dataclass
class Context:
    """What one step needs to know about the others (the extreme-point crop changes the post-processing)."""

    config: dict
    output_key: str
    cropped: bool = False


def _keys(args: dict, default: str = "image"):
    return args.get("fields", args.get("field", args.get("image_field", default)))


def _crop(args: dict, ctx: Context) -> list[Callable]:
    ctx.cropped = True
    return [
        app_transforms.CropAroundPointsd(
            keys=_keys(args),
            box_points=("points",),
            points_keys=("points",),
            roi_size=ctx.config.get("roi", DEFAULT_ROI),
            padding_mm=float(args.get("pad", ctx.config.get("padding", DEFAULT_PADDING_MM))),
        )
    ]


def _heatmap(args: dict, ctx: Context) -> list[Callable]:
    return [
        app_transforms.PointHeatmapsd(keys=_keys(args), points_keys=("points",), sigma=float(args.get("sigma", 3.0)))
    ]


def _argmax(args: dict, ctx: Context) -> list[Callable]:
    if ctx.cropped:  # PasteCropd takes the argmax after resampling the logits back to the box
        return []
    return [AsDiscreted(keys=_keys(args, ctx.output_key), argmax=True)]


def _restore(args: dict, ctx: Context) -> list[Callable]:
    keys = _keys(args, ctx.output_key)
    if ctx.cropped:
        return [app_transforms.PasteCropd(keys=keys)]
    return [Restored(keys=keys, ref_image=args.get("src_field", "image"))]


STEPS: dict[str, Callable[[dict, Context], list[Callable]]] = {
    "LoadNifti": lambda a, c: [LoadServerImaged(keys=_keys(a), ensure_channel_first=True)],
    "LoadImage": lambda a, c: [LoadServerImaged(keys=_keys(a), ensure_channel_first=True)],
    "ConvertToChannelsFirst": lambda a, c: [],  # the server's loader is already channel-first
    "ScaleByResolution": lambda a, c: [
        Spacingd(keys=_keys(a), pixdim=a["target_resolution"], mode="bilinear"),
    ],
    "ScaleIntensityRange": lambda a, c: [
        ScaleIntensityRanged(
            keys=_keys(a),
            a_min=a["a_min"],
            a_max=a["a_max"],
            b_min=a.get("b_min", 0.0),
            b_max=a.get("b_max", 1.0),
            clip=a.get("clip", False),
        )
    ],
    "NormalizeNonzeroIntensities": lambda a, c: [NormalizeIntensityd(keys=_keys(a), nonzero=True)],
    "CropByExtremePoints": _crop,
    "AddExtremePointsChannel": _heatmap,
    "ArgmaxAcrossChannels": _argmax,
    "SplitAcrossChannels": lambda a, c: [],  # one labelled mask is served; label value i+1 is channel i+1
    "KeepLargestCC": lambda a, c: [KeepLargestConnectedComponentd(keys=_keys(a, c.output_key), applied_labels=[1])],
    "RestoreOriginalShape": _restore,
    "FetchExtremePoints": lambda a, c: [],  # the server computes points and bbox on the final mask
    "CopyProperties": lambda a, c: [],
}


def build_pipeline(config: dict, inference: dict) -> tuple[list, list, str]:
    """Pre- and post-transforms of a v2/v3 config and the key the network output is stored under."""
    nodes = (inference.get("tf") or {}).get("output_nodes") or {}
    output_key = str(inference.get("output") or next(iter(nodes), "model"))
    ctx = Context(config=config, output_key=output_key)
    pre = _translate(config.get("pre_transforms"), "pre_transforms", ctx)
    if ctx.cropped:  # the points are voxels of the input: a resampling before the crop would misplace them,
        # and the crop is resized to `roi` anyway (its padding in mm, from the image's own spacing)
        crop = next(i for i, t in enumerate(pre) if isinstance(t, app_transforms.CropAroundPointsd))
        pre = [t for i, t in enumerate(pre) if i > crop or not isinstance(t, Spacingd)]
    return pre, _translate(config.get("post_transforms"), "post_transforms", ctx), output_key


def _translate(steps, where: str, ctx: Context) -> list[Callable]:
    transforms = []
    for location, name, args in config_steps(steps, where):
        if name not in STEPS:
            raise BadRequest(
                f"{location}: Clara v2/v3 transform '{name}' is not supported; mapped names: {', '.join(STEPS)}."
            )
        try:
            transforms.extend(STEPS[name](args, ctx))
        except (KeyError, TypeError, ValueError) as error:
            raise BadRequest(f"{location}: cannot map '{name}' with args {args}: {error}") from None
    return transforms
