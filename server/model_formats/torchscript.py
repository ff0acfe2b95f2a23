"""Uploaded TorchScript may do nothing but tensor math: checked before `torch.jit.load`, and again after.

`torch.jit.load` runs code from the archive: every `__setstate__` of the saved objects runs while it
loads, and TorchScript can call `torch.from_file(..., shared=True)` (creates and writes a file),
`torch.save`, RPC, custom classes and operators of any library loaded in the process. So the archive's
TorchScript source (`code/**/*.py`, what `torch.jit.load` compiles) is read as text and parsed BEFORE
anything loads it, and every method (`__setstate__` included, so it is allowed, never trusted) may only
call:

- ATen and prim operators (`torch.X`, `ops.aten.X`, `ops.prim.X`) but those in `DENIED_OPS`, which read,
  write, print, talk over the network, spawn work or reseed the global RNG;
- functions and classes defined in the archive itself (`__torch__.*`), but TorchScript's custom classes
  (`__torch__.torch.classes.*`, `torch.classes.*`);
- TorchScript's builtins (`BUILTINS`), `math.*`, and methods of the values it computes (tensors, lists,
  strings, its own modules), but methods named like a denied operator.

A raw text scan (`DENIED_TEXT`) runs too, so a difference between Python's parser and TorchScript's
cannot hide a call. After loading (before any forward), the compiled graph of every method of every
submodule is walked, with calls inlined, and every node must be an `aten::`/`prim::` operator not in
`DENIED_OPS`. Anything else: 400, nothing was run.
"""

from __future__ import annotations

import ast
import builtins
import re
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath

import torch

from ..errors import BadRequest

DENIED_OPS = frozenset({
    "from_file", "save", "load", "_print", "Print", "print", "to_here", "wait", "fork", "rpc_async", "rpc_sync",
    "rpc_remote", "awaitable", "awaitable_wait", "awaitable_nowait", "manual_seed", "seed", "PythonOp",
    "IgnoredPythonOp", "profile", "profile_ivalue", "TimePoint", "AddStatValue",
})  # fmt: skip
OP_NAMESPACES = frozenset({"aten", "prim"})
BUILTINS = frozenset({
    "annotate", "uninitialized", "unchecked_cast", "isinstance", "len", "int", "float", "bool", "str", "range",
    "enumerate", "zip", "min", "max", "abs", "round", "list", "tuple", "dict", "getattr", "hasattr", "divmod",
    "ord", "chr", "sum", "any", "all", "sorted", "reversed", "hash", "complex", "hex", "oct", "bin", "pow",
    "ops", "torch", "math", "Tensor", "Optional", "List", "Dict", "Tuple", "Union", "Future", "Await", "NoneType",
})  # fmt: skip
DENIED_TEXT = re.compile(
    r"\b(?:from_file|to_here|rpc_async|rpc_sync|rpc_remote|PythonOp|awaitable\w*)\b"
    r"|\b(?:_?print|Print|fork|wait|manual_seed|seed|save|load|exec|eval|open|__import__)\s*\("
    r"|\btorch\s*\.\s*classes\b|\bops\s*\.\s*(?!aten\b|prim\b)\w+"
)
MAX_CODE_BYTES = 64 * 1024**2


def refused(path: Path, why: str) -> BadRequest:
    return BadRequest(f"models/{path.name} was refused: {why}; TorchScript may only do tensor math. Nothing was run.")


def code_files(path: Path) -> dict[str, str]:
    """The archive's TorchScript source files (name → text), read without loading anything."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            repeated = [n for n, count in Counter(i.filename for i in infos).items() if count > 1]
            if repeated:  # two readers could pick different copies of the same name
                raise refused(path, f"it holds '{repeated[0]}' twice")
            sources = [i for i in infos if "/code/" in f"/{i.filename}" and i.filename.endswith(".py")]
            if sum(i.file_size for i in sources) > MAX_CODE_BYTES:
                raise refused(path, "its code is larger than any network's")
            return {i.filename: archive.read(i).decode("utf-8") for i in sources}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise BadRequest(f"models/{path.name} is not a readable TorchScript archive: {error}") from None
    except UnicodeDecodeError:
        raise refused(path, "its code is not UTF-8 text") from None


def dotted(node: ast.AST) -> str | None:
    """`a.b.c` for an attribute chain on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def check_reference(name: str) -> str | None:
    """Why a dotted reference (`torch.X`, `ops.NS.X`, `__torch__.X`, `math.X`) is refused; None if allowed."""
    parts = name.split(".")
    root = parts[0]
    if root == "__torch__":
        return "a TorchScript custom class" if name.startswith("__torch__.torch.classes") else None
    if root == "math":
        return None
    if root == "ops" or name.startswith("torch.ops."):
        namespace = parts[2] if root == "torch" else parts[1] if len(parts) > 1 else ""
        if namespace not in OP_NAMESPACES:
            return f"operator namespace '{namespace}'"
    elif root == "torch":
        if len(parts) > 1 and parts[1] in ("classes", "distributed", "hub", "package", "cuda", "backends"):
            return f"torch.{parts[1]}"
    else:
        return None
    return f"'{name}'" if parts[-1] in DENIED_OPS else None


def check_source(path: Path, filename: str, text: str) -> None:
    denied = DENIED_TEXT.search(text)
    if denied:
        raise refused(path, f"{PurePosixPath(filename).name} uses '{denied.group(0).strip()}'")
    try:
        tree = ast.parse(text, filename=filename)
    except (SyntaxError, ValueError, RecursionError) as error:
        raise refused(path, f"its code {PurePosixPath(filename).name} cannot be checked ({error})") from None
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.Global, ast.Nonlocal, ast.Lambda, ast.Await)):
            raise refused(path, f"{PurePosixPath(filename).name} has a {type(node).__name__} statement")
        if isinstance(node, ast.Attribute):
            name = dotted(node)
            why = check_reference(name) if name else None
            if why is None and node.attr in DENIED_OPS:
                why = f"a call to '{node.attr}'"
            if why:
                raise refused(path, f"{PurePosixPath(filename).name} uses {why}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name = node.func.id
            if name not in BUILTINS and (name in DENIED_OPS or hasattr(builtins, name) or name.startswith("__")):
                raise refused(path, f"{PurePosixPath(filename).name} calls '{name}'")


def check_archive(path: Path) -> None:
    """Every TorchScript source file of the archive, checked before `torch.jit.load` sees it."""
    sources = code_files(path)
    if not sources:
        raise refused(path, "it holds no TorchScript code")
    for filename, text in sources.items():
        check_source(path, filename, text)


def graph_nodes(block) -> list:
    found = []
    for node in block.nodes():
        found.append(node)
        for inner in node.blocks():
            found.extend(graph_nodes(inner))
    return found


def check_loaded(path: Path, module: torch.jit.ScriptModule) -> None:
    """The compiled graphs of every method of every submodule: aten/prim operators only.

    Each module type's methods are checked once; a method that calls a function or a method of
    something other than a submodule is checked with those calls inlined (what they run is not a
    method of a submodule, so it is checked nowhere else)."""
    modules = [m for m in module.modules() if hasattr(m, "_c")]
    types = {m._c._type().qualified_name(): m for m in modules}
    for submodule in types.values():
        for method in submodule._c._method_names():
            graph = submodule._c._get_method(method).graph
            nodes = graph_nodes(graph)
            if any(calls_outside(node, types) for node in nodes):
                graph = graph.copy()
                torch._C._jit_pass_inline(graph)
                nodes = graph_nodes(graph)
            for node in nodes:
                namespace, _, op = node.kind().partition("::")
                if namespace not in OP_NAMESPACES or op in DENIED_OPS:
                    raise refused(path, f"its method {method} runs {node.kind()}")
                for output in node.outputs():
                    if "__torch__.torch.classes" in str(output.type()):
                        raise refused(path, f"its method {method} uses a custom class ({output.type()})")


def calls_outside(node, module_types: dict) -> bool:
    if node.kind() == "prim::CallFunction":
        return True
    return node.kind() == "prim::CallMethod" and str(node.inputsAt(0).type()) not in module_types
