"""MONAI bundles: the parts of `configs/inference.json|yaml` inference needs, resolved with
`monai.bundle.ConfigParser` after every piece of them was checked.

A bundle config may hold Python (`"$..."`) and name any class (`_target_`); evaluating it whole would
run the uploader's code. So only `network_def`, `preprocessing`, `inferer` and `postprocessing` (and
what they refer to) are kept; each `_target_` must pass the allow-list (and is rewritten to the class
it resolved to), file writers are dropped, `LoadImaged` becomes the server's loader, and an expression
must be one of a few simple forms (`EXPRESSIONS`). Anything else is a 400 naming the key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from monai.bundle import ConfigParser
from monai.inferers import Inferer
from monai.transforms import Compose

from ..errors import BadRequest
from . import mmar, names
from .task import TaskSpec

NEEDED = ("network_def", "preprocessing", "inferer", "postprocessing")
COMPONENT_KEYS = {"_target_", "_disabled_", "_desc_"}  # `_requires_` and `_mode_` would run or defer code

_ID = r"[A-Za-z_]\w*(?:(?:#|::)\w+)*"
_STRING = r"'[^'\\]*'|\"[^\"\\]*\""
_TERM = rf"(?:@{_ID}|{_STRING})"
_DEVICE = r"'[\w:]+'|\"[\w:]+\""
EXPRESSIONS = {  # what a "$..." value may be; the comment says what the form is for
    "reference": re.compile(rf"^\$\s*{_TERM}(?:\s*\+\s*{_TERM})*\s*$"),  # $@bundle_root + '/models/model.pt'
    "device": re.compile(  # $torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')
        rf"^\$\s*torch\.device\(\s*(?:{_DEVICE})(?:\s+if\s+torch\.cuda\.is_available\(\)\s+else\s+(?:{_DEVICE}))?\s*\)$"
    ),
    "dtype": re.compile(
        r"^\$\s*(?:numpy|np|torch)\.(?:float16|float32|float64|half|float|double|int8|int16|int32|int64|uint8|"
        r"bool_?|long)$"
    ),
}
DROP = object()  # a list item removed from the config (a file writer)


def read_bundle(folder: Path) -> tuple[TaskSpec, Callable[[], torch.nn.Module] | None]:
    """The task spec of a bundle folder and a builder for its `network_def` (when it has one)."""
    config, metadata = read_configs(folder)
    missing = [key for key in NEEDED[1:3] if key not in config]
    if missing:
        raise BadRequest(f"Bundle inference config has no {' / '.join(missing)}: this server needs both.")
    kept = {key: config[key] for key in closure(config, [k for k in NEEDED if k in config])}
    kept["bundle_root"] = str(folder)
    parser = ConfigParser(kept)
    preprocessing = parsed(parser, "preprocessing")
    postprocessing = parsed(parser, "postprocessing") if "postprocessing" in kept else []
    inferer = parsed(parser, "inferer")
    if not isinstance(inferer, Inferer):
        raise BadRequest("Bundle 'inferer' must be a monai.inferers class (e.g. SlidingWindowInferer).")
    if not isinstance(metadata.get("version", ""), (str, int, float)):
        raise BadRequest("metadata.json: 'version' must be a string or a number.")
    model_type = str(metadata.get("type", "segmentation")).lower()
    if model_type not in mmar.MODEL_TYPES:
        raise BadRequest(f"Model type '{model_type}' is not served here; supported: {', '.join(mmar.MODEL_TYPES)}.")
    spec = TaskSpec(
        type=model_type,
        labels=bundle_labels(metadata),
        description=str(metadata.get("description") or metadata.get("name") or "MONAI bundle"),
        version=str(metadata.get("version", "1")),
        pre_transforms=flatten(preprocessing, "preprocessing"),
        inferer=inferer,
        post_transforms=flatten(postprocessing, "postprocessing"),
        model_info=mmar.model_info(metadata, model_type, {}),
    )
    network = (lambda: parsed(parser, "network_def")) if "network_def" in kept else None
    return spec, network


def read_configs(folder: Path) -> tuple[dict, dict]:
    configs = folder / "configs"
    paths = [configs / n for n in ("inference.json", "inference.yaml", "inference.yml") if (configs / n).is_file()]
    if not paths:
        raise BadRequest("Bundle has no configs/inference.json (or .yaml).")
    if not (configs / "metadata.json").is_file():
        raise BadRequest("Bundle has no configs/metadata.json.")
    config = _load(paths[0])
    metadata = _load(configs / "metadata.json")
    return config, metadata


def _load(path: Path) -> dict:
    name = f"configs/{path.name}"
    try:
        text = path.read_text(encoding="utf-8")
        value = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as error:
        raise BadRequest(f"{name} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}") from None
    if not isinstance(value, dict):
        raise BadRequest(f"{name} must hold an object (key: value).")
    return value


def closure(config: dict, roots: list[str]) -> list[str]:
    """The top-level ids `roots` need (following `@` references), each checked and rewritten in place."""
    kept, todo = [], list(roots)
    while todo:
        key = todo.pop()
        if key in kept:
            continue
        if key not in config:
            raise BadRequest(f"Bundle config refers to '@{key}', which it does not define.")
        kept.append(key)
        config[key] = check(config[key], key, todo)
    return kept


def check(value, where: str, refs: list[str]):
    """Validate one config value (recursively); collect the ids it refers to; return it rewritten."""
    if isinstance(value, dict):
        if "_target_" in value:
            return component(value, where, refs)
        return {k: check(v, f"{where}#{k}", refs) for k, v in value.items()}
    if isinstance(value, list):
        items = [check(v, f"{where}#{i}", refs) for i, v in enumerate(value)]
        return [item for item in items if item is not DROP]
    if isinstance(value, str):
        if value.startswith("%"):
            raise BadRequest(f"Bundle config '{where}': macros ('{value}') are not accepted; use @references.")
        if value.startswith("$"):
            if not any(form.match(value) for form in EXPRESSIONS.values()):
                raise BadRequest(
                    f"Bundle config '{where}': expression '{value}' is not accepted "
                    "(only @references, $@x + '...', $torch.device(...) and dtypes such as $numpy.float32)."
                )
            if EXPRESSIONS["device"].match(value):
                return "$torch.device('cpu')"  # the server moves the network; post-processing stays on the CPU
            refs.extend(re.split(r"#|::", ref)[0] for ref in re.findall(rf"@({_ID})", value))
        elif value.startswith("@"):
            refs.append(re.split(r"#|::", value[1:])[0])
    return value


def component(value: dict, where: str, refs: list[str]):
    """A `_target_` dict: the target must be allow-listed; it is rewritten to the class it resolved to."""
    unknown = sorted(k for k in value if k.startswith("_") and k.endswith("_") and k not in COMPONENT_KEYS)
    if unknown:
        raise BadRequest(f"Bundle config '{where}': {', '.join(unknown)} not accepted.")
    target = value["_target_"]
    if not isinstance(target, str) or target.startswith(("$", "@", "%")):
        raise BadRequest(f"Bundle config '{where}': _target_ must be a class name, got {target!r}.")
    if target in ("Compose", "monai.transforms.Compose"):  # a pipeline's container (refused in MMAR steps)
        cls, fix = Compose, (lambda a: a)
    else:
        resolved = resolve_target(target, where)
        if resolved.cls is None:  # a file writer, or what the server computes itself
            return DROP
        cls, fix = resolved.cls, resolved.fix_args
    args = {k: check(v, f"{where}#{k}", refs) for k, v in value.items() if k not in COMPONENT_KEYS}
    extra = {k: check(value[k], f"{where}#{k}", refs) for k in ("_disabled_", "_desc_") if k in value}
    return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **fix(args), **extra}


def resolve_target(target: str, where: str) -> names.Resolved:
    """A transform, inferer or network from the allow-list (the same one MMAR configs go through)."""
    try:
        return names.resolve_transform(target)
    except BadRequest:
        pass
    for resolve, fix in ((names.resolve_inferer, lambda a: a), (names.resolve_network, lambda a: a)):
        try:
            return names.Resolved(target, resolve(target), fix)
        except BadRequest:
            continue
    raise BadRequest(
        f"Bundle config '{where}': _target_ '{target}' is not allowed (monai.transforms, monai.inferers "
        "and monai.networks.nets classes only)."
    )


def parsed(parser: ConfigParser, key: str):
    try:
        return parser.get_parsed_content(key)
    except Exception as error:  # noqa: BLE001 - a checked config that still fails to build is a bad config
        raise BadRequest(f"Bundle config '{key}' cannot be built: {str(error).splitlines()[0]}") from None


def flatten(value, key: str) -> list[Callable]:
    """A `Compose` (possibly nested) or a list → the flat list of transforms the task runs."""
    if isinstance(value, Compose):
        return [t for inner in value.transforms for t in flatten(inner, key)]
    if isinstance(value, list):
        return [t for inner in value for t in flatten(inner, key)]
    if value is None:
        return []
    if not callable(value):
        raise BadRequest(f"Bundle '{key}' must be a Compose or a list of transforms.")
    return [value]


def bundle_labels(metadata: dict) -> list[str]:
    """Label names from the output's `channel_def`, in channel order, without the background."""
    try:
        outputs = (metadata.get("network_data_format") or {}).get("outputs") or {}
        output = outputs.get("pred") or next(iter(outputs.values()), {})
        channels = output.get("channel_def") or {}
        ordered = sorted(((int(k), str(v)) for k, v in channels.items()), key=lambda item: item[0])
    except (TypeError, ValueError, AttributeError):
        raise BadRequest(
            "metadata.json: network_data_format.outputs.pred.channel_def must map channel numbers to label names."
        ) from None
    return [name for index, name in ordered if index != 0 and name.lower() != "background"]
