"""The allow-list: the only classes an uploaded config may name, and how old names map to today's.

A name is resolved by looking it up as an attribute of a module we chose (MONAI's transforms,
inferers, networks and deepgrow transforms, the app's transforms, this package's adapters), never by
importing a module the upload names. Anything else is refused with a 400 that names it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import monai.apps.deepgrow.transforms as deepgrow_transforms
import monai.inferers as monai_inferers
import monai.networks.nets as monai_nets
import monai.transforms as monai_transforms
import torch

from ..errors import BadRequest
from . import adapters

# MONAI transforms an upload may not name: they take code (callables, module names) or read/write files.
# Loaders are mapped to the server's loader and writers are dropped (see below), never run as named.
REFUSED = {
    "Lambda", "Lambdad", "RandLambda", "RandLambdad", "TorchVision", "TorchVisiond", "RandTorchVision",
    "RandTorchVisiond", "CuCIM", "CuCIMd", "RandCuCIM", "RandCuCIMd", "TorchIO", "TorchIOd", "RandTorchIO",
    "RandTorchIOd", "ImageFilter", "ImageFilterd", "RandImageFilter", "RandImageFilterd", "Compose",
    "SomeOf", "OneOf", "RandomOrder", "LoadImage", "SaveImage", "WriteFileMapping",
    "WriteFileMappingd", "SaveClassification", "SaveClassificationd",
}  # fmt: skip

# Loading is the server's: it hands the task the decoded image (a file path under stock MONAI Label).
LOADERS = {"LoadImaged", "LoadNifti", "LoadNiftid", "LoadNiftiDataset", "LoadImageWithMetad"}
# Dropped: the server writes the mask and computes extreme points and the bounding box on the final mask.
WRITERS = {"SaveImaged", "Writer", "WriteNifti", "ClassificationWriter"}
DROPPED = WRITERS | {"ExtremePointsd", "BoundingBoxd"}


@dataclass(frozen=True)
class Resolved:
    """What a config name becomes: a class (None: dropped) and how its args are rewritten."""

    name: str
    cls: type | None
    fix_args: Callable[[dict], dict] = field(default=lambda args: args)


def _no_channel(args: dict) -> dict:
    return {"keys": args["keys"], "channel_dim": "no_channel", **_pick(args, "allow_missing_keys")}


def _channel_first(args: dict) -> dict:
    return {"keys": args["keys"], "channel_dim": args.get("channel_dim", -1), **_pick(args, "allow_missing_keys")}


def _pick(args: dict, *names: str) -> dict:
    return {k: args[k] for k in names if k in args}


# MONAI names removed since Clara 4.0 (configs of that era use them), mapped to today's equivalents; and
# `ToTensord`, whose inverse turns the image into a numpy array so the spatial inverses before it fail.
LEGACY_MONAI = {
    "ToTensord": ("EnsureTyped", lambda args: {**args, "data_type": "tensor"}),
    "AddChanneld": ("EnsureChannelFirstd", _no_channel),
    "AddChannel": ("EnsureChannelFirst", _no_channel),
    "AsChannelFirstd": ("EnsureChannelFirstd", _channel_first),
    "AsChannelFirst": ("EnsureChannelFirst", _channel_first),
}


def _attribute(module: ModuleType, name: str, base: type) -> type | None:
    value = getattr(module, name, None) if name.isidentifier() and not name.startswith("_") else None
    return value if isinstance(value, type) and issubclass(value, base) else None


def _server_transform(name: str) -> type | None:
    """`aiaa.transforms.X`: AIAA's own names, and the server's/app's transforms under the same prefix."""
    aiaa = {"Restored": adapters.Restored, "LargestCCd": monai_transforms.KeepLargestConnectedComponentd}
    if name in aiaa:
        return aiaa[name]
    for module in (adapters, adapters.app_transforms):
        if name in getattr(module, "__all__", ()):
            found = _attribute(module, name, monai_transforms.Transform)
            if found:
                return found
    return None


def resolve_transform(full_name: str) -> Resolved:
    """`monai.transforms.X`, a bare MONAI transform name (v4 and bundles allow both), `aiaa.transforms.X`,
    `aiaa.apps.deepgrow.X` / `monai.apps.deepgrow.transforms.X`; anything else → 400."""
    if not isinstance(full_name, str) or not full_name:
        raise BadRequest(f"Transform name must be a non-empty string, got {full_name!r}.")
    prefix, _, name = full_name.rpartition(".")
    monai_name = prefix in ("", "monai.transforms") or prefix.startswith("monai.transforms.")
    if name in DROPPED and (monai_name or prefix == "aiaa.transforms"):
        return Resolved(full_name, None)
    if name in LOADERS and monai_name:
        return Resolved(full_name, adapters.LoadServerImaged, lambda args: _pick(args, "keys", "ensure_channel_first"))
    if prefix in ("aiaa.transforms", "aiaa.apps.transforms"):
        cls = _server_transform(name)
    elif prefix in ("aiaa.apps.deepgrow", "aiaa.apps.deepgrow.transforms", "monai.apps.deepgrow.transforms"):
        cls = _attribute(deepgrow_transforms, name, monai_transforms.Transform)
    elif monai_name:
        if name in LEGACY_MONAI:
            new, fix = LEGACY_MONAI[name]
            return Resolved(full_name, getattr(monai_transforms, new), fix)
        cls = None if name in REFUSED else _attribute(monai_transforms, name, monai_transforms.Transform)
    else:
        cls = None
    if cls is None:
        raise BadRequest(
            f"Transform '{full_name}' is not allowed: this server accepts monai.transforms.*, "
            "aiaa.transforms.* (Restored, ExtremePointsd, BoundingBoxd, LargestCCd, Writer and the server's own) "
            "and aiaa.apps.deepgrow.*."
        )
    return Resolved(full_name, cls)


def check_writer(section) -> None:
    """The config's `writer` is replaced by the server's own; its name must still be a known writer."""
    name = section.get("name") if isinstance(section, dict) else None
    if str(name).rpartition(".")[2] not in WRITERS:
        raise BadRequest(f"writer '{name}' is not allowed: the server writes masks itself (aiaa.transforms.Writer).")


def resolve_network(full_name: str) -> type[torch.nn.Module]:
    """`monai.networks.nets.X` (or a bare X) only."""
    prefix, _, name = str(full_name).rpartition(".")
    cls = _attribute(monai_nets, name, torch.nn.Module) if prefix in ("", "monai.networks.nets") else None
    if cls is None:
        raise BadRequest(f"Network '{full_name}' is not allowed: name a monai.networks.nets class (e.g. UNet).")
    return cls


def resolve_inferer(full_name: str) -> type[monai_inferers.Inferer]:
    """`monai.inferers.X` (or a bare X): SimpleInferer, SlidingWindowInferer and friends."""
    prefix, _, name = str(full_name).rpartition(".")
    cls = _attribute(monai_inferers, name, monai_inferers.Inferer) if prefix in ("", "monai.inferers") else None
    if cls is None:
        raise BadRequest(f"Inferer '{full_name}' is not allowed: name a monai.inferers class (e.g. SimpleInferer).")
    return cls


def build(resolved: Resolved, args: dict, where: str):
    """Instantiate an allow-listed class with JSON args; a constructor error is the config's fault (400)."""
    if not isinstance(args, dict):
        raise BadRequest(f"{where}: 'args' of '{resolved.name}' must be a JSON object.")
    args = resolved.fix_args(dict(args))
    if "dimensions" in args and "dimensions" not in inspect.signature(resolved.cls).parameters:
        args.setdefault("spatial_dims", args.pop("dimensions"))  # MONAI's rename since Clara 4.0 (UNet, deepgrow)
    try:
        return resolved.cls(**args)
    except Exception as error:  # noqa: BLE001 - any constructor failure is a bad config, not a server bug
        raise BadRequest(f"{where}: cannot build '{resolved.name}' with args {args}: {error}") from None


def config_steps(steps, where: str) -> list[tuple[str, str, dict]]:
    """A config's `[{"name": ..., "args": {...}}, ...]` checked: (location, name, args) for each step."""
    if steps is None:
        return []
    if not isinstance(steps, list):
        raise BadRequest(f'\'{where}\' must be a list of {{"name", "args"}} objects.')
    checked = []
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or "name" not in step:
            raise BadRequest(f"{where}[{i}] must be an object with a 'name'.")
        checked.append((f"{where}[{i}]", str(step["name"]), step.get("args") or {}))
    return checked
