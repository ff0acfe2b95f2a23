"""The allow-list: the only classes an uploaded config may name, and how old names map to today's.

A name is resolved to the object it names, by looking it up as an attribute of a module we chose
(MONAI's transforms, inferers, networks and deepgrow transforms, the app's transforms, this package's
adapters), never by importing a module the upload names. The OBJECT is then judged, not the string: MONAI's
own aliases (`LoadImageD`, `LoadImageDict`, `SaveImageD`, `LambdaD`...) are the classes they alias, so they
meet the same rule, and so does any subclass. Arguments are checked against the class's signature
(`arguments.check_args`) before it is built. Anything else is refused with a 400 that names it.
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
from .arguments import check_args, check_value


def _classes(module: ModuleType, *names: str) -> tuple[type, ...]:
    return tuple(getattr(module, n) for n in names if isinstance(getattr(module, n, None), type))


# MONAI transforms an upload may not name (nor their subclasses, whatever alias names them): they run
# callables or name-resolved code, log the data, sleep, or are containers whose items would escape the
# step-by-step checks. Loaders and writers are handled apart (below).
REFUSED = _classes(
    monai_transforms,
    "Lambda", "Lambdad", "RandLambda", "RandLambdad", "TorchVision", "TorchVisiond", "RandTorchVision",
    "RandTorchVisiond", "CuCIM", "CuCIMd", "RandCuCIM", "RandCuCIMd", "TorchIO", "TorchIOd", "RandTorchIO",
    "RandTorchIOd", "ImageFilter", "ImageFilterd", "RandImageFilter", "RandImageFilterd", "Compose", "SomeOf",
    "OneOf", "RandomOrder", "DataStats", "DataStatsd", "SimulateDelay", "SimulateDelayd", "BatchInverseTransform",
    "LoadImage", "IntensityStats", "IntensityStatsd",
)  # fmt: skip
# Loading is the server's: it hands the task the decoded image (a file path under stock MONAI Label).
LOADER = monai_transforms.LoadImaged
READERS = ("ITKReader", "NibabelReader", "NumpyReader", "PILReader", "PydicomReader", "NrrdReader")
# Transforms that write files: never built. A bundle's post-processing ends with one (MONAI's layout),
# so a bundle's are dropped; an MMAR's steps never needed one (the `writer` section), so there they are
# refused. Any other class of MONAI's io package is refused too.
WRITERS = _classes(
    monai_transforms, "SaveImage", "SaveImaged", "WriteFileMapping", "WriteFileMappingd", "SaveClassification",
    "SaveClassificationd",
)  # fmt: skip
IO_PACKAGE = "monai.transforms.io"
# AIAA's names for what the server does itself (write the mask, compute extreme points and bounding box);
# they are not MONAI classes, so they go by name.
AIAA_WRITERS = {"Writer", "WriteNifti", "ClassificationWriter"}
AIAA_DROPPED = AIAA_WRITERS | {"ExtremePointsd", "BoundingBoxd"}
# Names the `writer` section may give (it is replaced by the server's own writer, never built).
WRITER_SECTION_NAMES = AIAA_WRITERS | {"SaveImaged", "SaveImage"}
# Networks a state dict may be loaded into: plain segmentation networks that download nothing.
NETWORKS = _classes(
    monai_nets, "UNet", "BasicUNet", "BasicUNetPlusPlus", "DynUNet", "SegResNet", "SegResNetDS", "UNETR",
    "SwinUNETR", "AttentionUnet", "VNet", "HighResNet",
)  # fmt: skip
INFERERS = _classes(monai_inferers, "SimpleInferer", "SlidingWindowInferer", "SlidingWindowInfererAdapt")


@dataclass(frozen=True)
class Resolved:
    """What a config name becomes: a class (None: dropped) and how its args are rewritten.

    `judge` is the class whose signature judges the config's own args when they are rewritten for
    another class (a `LoadImaged` becomes the server's loader); None: the rewritten args are judged
    against `cls`. `exempt` names args that `fix_args` checks itself (the loader's `reader`).
    """

    name: str
    cls: type | None
    fix_args: Callable[[dict], dict] = field(default=lambda args: args)
    judge: type | None = None
    exempt: frozenset[str] = frozenset()


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


def _loader_args(args: dict) -> dict:
    """A config's `LoadImaged` args for the server's loader; `reader` may only name one of MONAI's readers."""
    reader = args.get("reader")
    if reader is not None and reader not in READERS:
        raise BadRequest(f"LoadImaged: reader {reader!r} is not allowed; use one of {', '.join(READERS)} (or none).")
    return _pick(args, "keys", "ensure_channel_first")


LEGACY_LOADERS = {"LoadNifti", "LoadNiftid", "LoadNiftiDataset", "LoadImageWithMetad"}  # gone from MONAI


def lookup(prefix: str, name: str) -> type | None:
    """The class a `prefix.name` config name refers to, from the modules we chose; None if none."""
    if prefix in ("aiaa.transforms", "aiaa.apps.transforms"):
        return _server_transform(name)
    if prefix in ("aiaa.apps.deepgrow", "aiaa.apps.deepgrow.transforms", "monai.apps.deepgrow.transforms"):
        return _attribute(deepgrow_transforms, name, monai_transforms.Transform)
    if prefix in ("", "monai.transforms") or prefix.startswith("monai.transforms."):
        return _attribute(monai_transforms, name, monai_transforms.Transform)
    return None


def resolve_transform(full_name: str, *, drop_writers: bool = False) -> Resolved:
    """`monai.transforms.X`, a bare MONAI transform name (v4 and bundles allow both), `aiaa.transforms.X`,
    `aiaa.apps.deepgrow.X` / `monai.apps.deepgrow.transforms.X`; anything else → 400.

    The name is looked up and the class it names is judged (module docstring). A writer is dropped when
    `drop_writers` (a bundle), else refused.
    """
    if not isinstance(full_name, str) or not full_name:
        raise BadRequest(f"Transform name must be a non-empty string, got {full_name!r}.")
    prefix, _, name = full_name.rpartition(".")
    monai_name = prefix in ("", "monai.transforms") or prefix.startswith("monai.transforms.")
    if name in AIAA_DROPPED and (monai_name or prefix == "aiaa.transforms"):
        return Resolved(full_name, None)
    cls = lookup(prefix, name)
    if cls is None and monai_name and name in LEGACY_LOADERS:
        return Resolved(full_name, adapters.LoadServerImaged, _loader_args, exempt=frozenset({"reader"}))
    if cls is None and monai_name and name in LEGACY_MONAI:
        new, fix = LEGACY_MONAI[name]
        return Resolved(full_name, getattr(monai_transforms, new), fix)
    if cls is None:
        raise BadRequest(
            f"Transform '{full_name}' is not allowed: this server accepts monai.transforms.*, "
            "aiaa.transforms.* (Restored, ExtremePointsd, BoundingBoxd, LargestCCd, Writer and the server's own) "
            "and aiaa.apps.deepgrow.*."
        )
    return judge_transform(full_name, cls, drop_writers)


def judge_transform(full_name: str, cls: type, drop_writers: bool) -> Resolved:
    """The rule for the class a name resolved to (by object: aliases and subclasses meet the same rule)."""
    shown = f"'{full_name}'" + ("" if full_name.rpartition(".")[2] == cls.__name__ else f" (MONAI's {cls.__name__})")
    if issubclass(cls, LOADER):
        return Resolved(full_name, adapters.LoadServerImaged, _loader_args, judge=LOADER, exempt=frozenset({"reader"}))
    if issubclass(cls, WRITERS) or cls.__module__.startswith(IO_PACKAGE):
        if drop_writers and issubclass(cls, WRITERS):
            return Resolved(full_name, None)
        raise BadRequest(
            f"Transform {shown} is not allowed: it reads or writes files (the server loads the image and "
            "writes the mask itself)."
        )
    if issubclass(cls, REFUSED):
        raise BadRequest(
            f"Transform {shown} is not allowed: it runs code given by name or as a callable, logs the data, "
            "or is a container (list the steps one by one)."
        )
    if cls.__name__ in LEGACY_MONAI:  # ToTensord, under any alias
        new, fix = LEGACY_MONAI[cls.__name__]
        return Resolved(full_name, getattr(monai_transforms, new), fix)
    return Resolved(full_name, cls)


def check_writer(section) -> None:
    """The config's `writer` is replaced by the server's own (never built); its name must be a known writer."""
    name = section.get("name") if isinstance(section, dict) else None
    if str(name).rpartition(".")[2] not in WRITER_SECTION_NAMES:
        raise BadRequest(f"writer '{name}' is not allowed: the server writes masks itself (aiaa.transforms.Writer).")


def resolve_network(full_name: str) -> type[torch.nn.Module]:
    """`monai.networks.nets.X` (or a bare X), for X one of `NETWORKS` (under any of MONAI's aliases)."""
    prefix, _, name = str(full_name).rpartition(".")
    cls = _attribute(monai_nets, name, torch.nn.Module) if prefix in ("", "monai.networks.nets") else None
    if cls is None or cls not in NETWORKS:
        raise BadRequest(
            f"Network '{full_name}' is not allowed: name one of monai.networks.nets "
            f"{', '.join(c.__name__ for c in NETWORKS)}."
        )
    return cls


def resolve_inferer(full_name: str) -> type[monai_inferers.Inferer]:
    """`monai.inferers.X` (or a bare X): SimpleInferer, SlidingWindowInferer, SlidingWindowInfererAdapt."""
    prefix, _, name = str(full_name).rpartition(".")
    cls = _attribute(monai_inferers, name, monai_inferers.Inferer) if prefix in ("", "monai.inferers") else None
    if cls is None or cls not in INFERERS:
        raise BadRequest(
            f"Inferer '{full_name}' is not allowed: name one of monai.inferers "
            f"{', '.join(c.__name__ for c in INFERERS)}."
        )
    return cls


def build(resolved: Resolved, args: dict, where: str):
    """Instantiate an allow-listed class with checked args; a constructor error is the config's fault (400)."""
    if not isinstance(args, dict):
        raise BadRequest(f"{where}: 'args' of '{resolved.name}' must be a JSON object.")
    if resolved.judge is not None:
        check_args(resolved.judge, args, where, resolved.exempt)
    else:
        check_value({k: v for k, v in args.items() if k not in resolved.exempt}, where, transforms_ok=True)
    try:
        args = resolved.fix_args(dict(args))
    except (KeyError, TypeError) as error:
        raise BadRequest(f"{where}: '{resolved.name}' needs the argument {error}.") from None
    if "dimensions" in args and "dimensions" not in inspect.signature(resolved.cls).parameters:
        args.setdefault("spatial_dims", args.pop("dimensions"))  # MONAI's rename since Clara 4.0 (UNet, deepgrow)
    if resolved.judge is None:
        check_args(resolved.cls, args, where)
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
        args = step.get("args") or {}
        check_value(args, f"{where}[{i}] args")
        checked.append((f"{where}[{i}]", str(step["name"]), args))
    return checked
