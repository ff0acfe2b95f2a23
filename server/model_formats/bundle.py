"""MONAI bundles: the parts of `configs/inference.json|yaml` inference needs, checked, then built by the
server itself (never by `monai.bundle.ConfigParser`, which would evaluate Python and import by name).

A bundle config may hold Python (`"$..."`), macros (`"%..."`) and name any class (`_target_`). So only
`network_def`, `preprocessing`, `inferer` and `postprocessing` (and what they refer to with `@id`) are
kept; each `_target_` must pass the allow-list (`names`, by the object the name resolves to, so MONAI's
aliases meet the same rule), file writers are dropped unbuilt, `LoadImaged` becomes the server's loader,
and an expression must be one of a few simple forms (`EXPRESSIONS`), which the server evaluates itself.
Every component is then built with its references resolved, and its resolved arguments are checked
(`arguments.check_args`) before its class is called. Anything else is a 400 naming the key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from monai.inferers import Inferer
from monai.transforms import Compose

from aiaa_core.vocabularies import ModelFormat, ModelType

from ..errors import BadRequest
from . import mmar, names
from .base import LoadContext, ModelFormatHandler
from .task import TaskSpec, configured_model

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
MAX_DEPTH = 32
DROP = object()  # a list item removed from the config (a file writer, a disabled component)
COMPOSE = names.Resolved("Compose", Compose)  # a pipeline's container (refused as an MMAR step)


@dataclass(eq=False)
class Component:
    """A checked `_target_` dict: the allow-listed class it resolved to and its (checked, unresolved) args."""

    resolved: names.Resolved
    args: dict
    where: str


def read_bundle(folder: Path) -> tuple[TaskSpec, Callable[[], torch.nn.Module] | None]:
    """The task spec of a bundle folder and a builder for its `network_def` (when it has one)."""
    config, metadata = read_configs(folder)
    missing = [key for key in NEEDED[1:3] if key not in config]
    if missing:
        raise BadRequest(f"Bundle inference config has no {' / '.join(missing)}: this server needs both.")
    kept = {key: config[key] for key in closure(config, [k for k in NEEDED if k in config])}
    kept["bundle_root"] = str(folder)
    built = Builder(kept)
    preprocessing = built.get("preprocessing")
    postprocessing = built.get("postprocessing") if "postprocessing" in kept else []
    inferer = built.get("inferer")
    if not isinstance(inferer, Inferer):
        raise BadRequest("Bundle 'inferer' must be a monai.inferers class (e.g. SlidingWindowInferer).")
    if not isinstance(metadata.get("version", ""), (str, int, float)):
        raise BadRequest("metadata.json: 'version' must be a string or a number.")
    model_type = str(metadata.get("type", ModelType.SEGMENTATION)).lower()
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
    network = (lambda: built.get("network_def")) if "network_def" in kept else None
    return spec, network


CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")  # the first present is read


def config_paths(folder: Path) -> list[Path]:
    """The bundle's inference config files (the first is read); a 400 when it or the metadata is missing."""
    configs = folder / "configs"
    paths = [configs / n for n in CONFIG_NAMES if (configs / n).is_file()]
    if not paths:
        raise BadRequest("Bundle has no configs/inference.json (or .yaml).")
    if not (configs / "metadata.json").is_file():
        raise BadRequest("Bundle has no configs/metadata.json.")
    return paths


def read_configs(folder: Path) -> tuple[dict, dict]:
    configs = folder / "configs"
    paths = config_paths(folder)
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
    if where.count("#") > MAX_DEPTH:
        raise BadRequest(f"Bundle config '{where}': nested deeper than {MAX_DEPTH} levels.")
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
    """A `_target_` dict: the target must be allow-listed; its args are checked and their refs collected."""
    unknown = sorted(k for k in value if k.startswith("_") and k.endswith("_") and k not in COMPONENT_KEYS)
    if unknown:
        raise BadRequest(f"Bundle config '{where}': {', '.join(unknown)} not accepted.")
    target = value["_target_"]
    if not isinstance(target, str) or target.startswith(("$", "@", "%")):
        raise BadRequest(f"Bundle config '{where}': _target_ must be a class name, got {target!r}.")
    disabled = value.get("_disabled_", False)
    # Not `params.flag_value` on purpose: MONAI's ConfigComponent disables only on `str(v).lower() == "true"`,
    # so "yes"/"1" would mean enabled to MONAI; only the two spellings both readers agree on are accepted.
    if not isinstance(disabled, (bool, str)) or str(disabled).lower() not in ("true", "false"):
        raise BadRequest(f"Bundle config '{where}#_disabled_': must be true or false, got {disabled!r}.")
    resolved = COMPOSE if target in ("Compose", "monai.transforms.Compose") else resolve_target(target, where)
    if resolved.cls is None or str(disabled).lower() == "true":  # a file writer, or what the server computes
        return DROP
    args = {k: check(v, f"{where}#{k}", refs) for k, v in value.items() if k not in COMPONENT_KEYS}
    return Component(resolved, args, where)


def resolve_target(target: str, where: str) -> names.Resolved:
    """A transform, inferer or network from the allow-list (the same one MMAR configs go through)."""
    prefix, _, name = target.rpartition(".")
    known = names.AIAA_DROPPED | names.LEGACY_LOADERS | set(names.LEGACY_MONAI)
    if names.lookup(prefix, name) is not None or name in known:  # a transform: its verdict, not a fallback
        try:
            return names.resolve_transform(target, drop_writers=True)
        except BadRequest as error:
            raise BadRequest(f"Bundle config '{where}': _target_ {error.message.removeprefix('Transform ')}") from None
    for resolve, fix in ((names.resolve_inferer, lambda a: a), (names.resolve_network, lambda a: a)):
        try:
            return names.Resolved(target, resolve(target), fix)
        except BadRequest:
            continue
    raise BadRequest(
        f"Bundle config '{where}': _target_ '{target}' is not allowed (monai.transforms, monai.inferers "
        "and monai.networks.nets classes only)."
    )


class Builder:
    """Builds the kept, checked config the way `ConfigParser` would, without evaluating anything: `@id`
    (and `@id#key#0`) refer to other kept items (each built once, as MONAI shares them), `$` forms are
    evaluated here, and each component's resolved args are checked before its class is called."""

    def __init__(self, config: dict):
        self.config = config
        self.built: dict[int, object] = {}
        self.building: set[int] = set()
        self.following: list[str] = []  # the references being resolved (a cycle is refused)

    def get(self, key: str):
        return self.resolve(self.config[key], key)

    def resolve(self, value, where: str):
        if value is DROP:
            return None
        if isinstance(value, Component):
            return self.component(value)
        if isinstance(value, dict):
            return {k: self.resolve(v, f"{where}#{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, f"{where}#{i}") for i, v in enumerate(value)]
        if isinstance(value, str) and value.startswith("@"):
            return self.reference(value[1:], where)
        if isinstance(value, str) and value.startswith("$"):
            return self.expression(value, where)
        return value

    def component(self, node: Component):
        if id(node) in self.built:
            return self.built[id(node)]
        if id(node) in self.building:
            raise BadRequest(f"Bundle config '{node.where}' refers to itself.")
        self.building.add(id(node))
        args = {k: self.resolve(v, f"{node.where}#{k}") for k, v in node.args.items()}
        self.built[id(node)] = built = names.build(node.resolved, args, f"Bundle config '{node.where}'")
        return built

    def reference(self, ref: str, where: str):
        """`id`, `id#key#0`: the item at that path of the checked config, built."""
        if not re.fullmatch(_ID, ref):
            raise BadRequest(f"Bundle config '{where}': reference '@{ref}' is not accepted.")
        first, *path = re.split(r"#|::", ref)
        node = self.config.get(first)
        for part in path:
            if isinstance(node, Component):
                node = node.args
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise BadRequest(f"Bundle config '{where}': '@{ref}' refers to nothing.")
        if ref in self.following:
            raise BadRequest(f"Bundle config '{where}': '@{ref}' refers back to itself.")
        self.following.append(ref)
        try:
            return self.resolve(node, ref)
        finally:
            self.following.pop()

    def expression(self, text: str, where: str):
        if EXPRESSIONS["device"].match(text):
            return torch.device("cpu")  # the server moves the network; pre/post-processing run on the CPU
        if EXPRESSIONS["dtype"].match(text):
            module, _, name = text[1:].strip().partition(".")
            return getattr(torch if module == "torch" else np, name)
        terms = re.findall(rf"@({_ID})|'([^'\\]*)'|\"([^\"\\]*)\"", text[1:])
        values = [self.reference(ref, where) if ref else single or double for ref, single, double in terms]
        if not all(isinstance(v, str) for v in values):
            raise BadRequest(f"Bundle config '{where}': '{text}' joins values that are not all strings.")
        return "".join(values)


def flatten(value, key: str) -> list[Callable]:
    """A `Compose` (possibly nested) or a list → the flat list of transforms the task runs."""
    if type(value) is Compose:
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


class BundleFormat(ModelFormatHandler):
    """A MONAI bundle: `configs/inference.json|yaml`, `configs/metadata.json`, `models/model.pt|ts`."""

    format = ModelFormat.BUNDLE

    def detect(self, folder: Path) -> bool:
        return (folder / "configs").is_dir()

    def validate(self, folder: Path) -> None:
        super().validate(folder)
        config_paths(folder)

    def build(self, folder: Path, name: str, context: LoadContext):
        spec, network = read_bundle(folder)
        return configured_model(folder, name, self.format, spec, network, context.engines)

    def config_file(self, folder: Path) -> Path:
        found = [folder / "configs" / n for n in CONFIG_NAMES if (folder / "configs" / n).is_file()]
        return found[0] if found else folder / "configs" / CONFIG_NAMES[0]

    def config_files(self, folder: Path) -> list[Path]:
        return sorted((folder / "configs").glob("inference.*"))
