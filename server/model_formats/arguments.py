"""The arguments an upload may give an allow-listed class: data only, never something MONAI turns into code.

An allow-listed class is only as safe as its arguments: MONAI resolves some strings to callables
(`LoadImaged(reader="os.system")` is `pydoc.locate`d and called), writes to others (`output_dir`), and
forwards `**kwargs` to whatever it builds. So every argument of every class an upload names is checked
against the class's own signature before the class is built:

- the name must be one of the constructor's parameters (`**kwargs` only where the class takes them);
- parameters that take code, classes, loggers or file paths (`CODE_ARGS`, or annotated `Callable`,
  `type[...]`, a reader, writer, path, merger, module or `Any`) take nothing but None or False;
- values are JSON data (or, in a bundle, the transforms and devices the server itself built from the
  checked config, and only where a transform is expected); strings naming a Python object
  (`os.system`, `builtins.eval`, `eval`) or a file path are refused wherever they appear.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable

import numpy as np
import torch
from monai.transforms import Transform

from ..errors import BadRequest

# Parameters MONAI turns into code to call, classes to build, loggers, or files and folders to write.
CODE_ARGS = frozenset({
    "reader", "writer", "func", "inv_func", "post_func", "select_fn", "filter_fn", "filter", "ensemble",
    "additional_info", "logger_handler", "output_name_formatter", "collate_fn", "other", "function", "name",
    "output_dir", "data_root_dir", "mapping_file_path", "folder_layout", "savepath_in_metadict", "output_postfix",
    "output_ext", "merger_cls", "merger_kwargs", "preprocessing", "postprocessing", "pretrained",
    "pretrained_path", "backbone", "store", "cam_name", "target_layers", "log_stats",
})  # fmt: skip
CODE_ANNOTATION = re.compile(r"Callable|type\[|PathLike|\bPath\b|Reader|Writer|Merger|nn\.Module|Logger|\bAny\b")
OBJECT_ARGS = frozenset({"transform", "transforms"})  # take transforms (a bundle's `@preprocessing`)

# Builtins that run code or touch files: refused as string values (`pydoc.locate("eval")` finds them).
CODE_BUILTINS = frozenset({
    "eval", "exec", "compile", "open", "__import__", "getattr", "setattr", "delattr", "globals", "locals", "vars",
    "input", "breakpoint", "exit", "quit", "help", "memoryview", "__build_class__",
})  # fmt: skip
DOTTED = re.compile(r"[A-Za-z_]\w*(?:\s*\.\s*[A-Za-z_]\w*)+")
DTYPE_PREFIXES = {"torch": torch, "numpy": np, "np": np}
MAX_DEPTH = 16
MAX_STRING = 1000


def is_dtype_name(text: str) -> bool:
    """`torch.float32`, `numpy.int16`, `np.uint8`: a dtype, the one dotted name a value may hold."""
    prefix, _, name = text.partition(".")
    module = DTYPE_PREFIXES.get(prefix)
    if module is None or not name.isidentifier() or name.startswith("_"):
        return False
    value = getattr(module, name, None)
    return isinstance(value, torch.dtype) or (isinstance(value, type) and issubclass(value, np.generic))


def check_string(text: str, where: str) -> None:
    if len(text) > MAX_STRING:
        raise BadRequest(f"{where}: a string of {len(text)} characters is longer than the {MAX_STRING} allowed.")
    stripped = text.strip()
    if DOTTED.fullmatch(stripped) and not is_dtype_name(stripped.replace(" ", "")):
        raise BadRequest(f"{where}: '{text}' names a Python object; arguments are data, never code to look up.")
    if stripped in CODE_BUILTINS or (stripped.startswith("__") and stripped.endswith("__")):
        raise BadRequest(f"{where}: '{text}' names a Python builtin; arguments are data, never code to look up.")
    if "/" in text or "\\" in text or stripped.startswith("~") or "\x00" in text:
        raise BadRequest(f"{where}: '{text}' looks like a file path; a model's arguments never name files.")


def is_built_object(value) -> bool:
    """What the bundle reader builds itself from a checked config: transforms, devices and dtypes."""
    return isinstance(value, (Transform, torch.device, torch.dtype)) or (
        isinstance(value, type) and issubclass(value, np.generic)
    )


def check_value(value, where: str, transforms_ok: bool = False, depth: int = 0) -> None:
    """JSON data (or, where `transforms_ok`, transforms the server built), any depth up to MAX_DEPTH."""
    if depth > MAX_DEPTH:
        raise BadRequest(f"{where}: nested deeper than {MAX_DEPTH} levels.")
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadRequest(f"{where}: {value} is not a finite number.")
        return
    if isinstance(value, str):
        return check_string(value, where)
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_value(item, f"{where}[{i}]", transforms_ok, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise BadRequest(f"{where}: keys must be strings, got {key!r}.")
            check_string(key, f"{where} (a key)")
            check_value(item, f"{where}.{key}", transforms_ok, depth + 1)
        return
    if is_built_object(value) and (transforms_ok or not isinstance(value, Transform)):
        return
    raise BadRequest(f"{where}: a {type(value).__name__} is not accepted here; arguments are data.")


def parameters(cls: type | Callable) -> tuple[dict[str, inspect.Parameter], bool]:
    """The constructor's named parameters, and whether it also takes `**kwargs`."""
    try:
        found = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return {}, False
    named = {n: p for n, p in found.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return named, any(p.kind == p.VAR_KEYWORD for p in found.values())


def takes_code(name: str, parameter: inspect.Parameter | None) -> bool:
    if name in OBJECT_ARGS:
        return False
    annotation = "" if parameter is None else str(parameter.annotation)
    return name in CODE_ARGS or bool(CODE_ANNOTATION.search(annotation))


def check_args(cls: type, args: dict, where: str, exempt: frozenset[str] = frozenset()) -> None:
    """Refuse (400) any argument of `cls` that is not data for one of its parameters (module docstring)."""
    named, kwargs = parameters(cls)
    for name, value in args.items():
        here = f"{where}: argument '{name}' of {cls.__name__}"
        parameter = named.get(name)
        if parameter is None and not kwargs:
            raise BadRequest(f"{where}: {cls.__name__} has no argument '{name}' (it takes {', '.join(named)}).")
        if value is not None and value is not False and name not in exempt and takes_code(name, parameter):
            raise BadRequest(f"{here} is refused: it takes code, a class or a file path, which an upload may not give.")
        check_value(value, here, transforms_ok=name in OBJECT_ARGS)
