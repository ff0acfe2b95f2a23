"""An uploaded model can run nothing but tensor math: configs (MMAR, bundle), TorchScript, state dicts and
ONNX graphs that would run code, read or write files are refused before anything of them runs, and a model
installed under older rules that fails today's is not served at start-up.

Every payload here is live (it runs under stock MONAI / PyTorch: see the `*_payloads_are_real` tests) and
would create a marker file in the test's tmp folder; each test asserts the refusal and that the marker
does not exist.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from model_archives import (
    bundle_files,
    mmar_files,
    onnx_with,
    rewrite_torchscript,
    setstate_torchscript,
    tiny_unet,
    unet_network_section,
    v4_config,
)
from monai.transforms import LoadImageD

from server.errors import BadRequest
from server.inference import run_model
from server.model_formats import load_model
from server.model_formats.torchscript import check_loaded, check_source
from server.registry import MARKER, ModelRegistry, smoke_image, smoke_inputs


def write(folder: Path, files: dict) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def mmar_with_step(folder: Path, where: str, step: dict, **config) -> Path:
    body = v4_config(**config)
    body[where].insert(1, step)
    return write(folder, mmar_files(body))


def touch(marker: Path) -> dict:
    """LoadImage's extra args, which it passes to the reader it resolved: `subprocess.call(args=[...])`."""
    return {"args": ["touch", str(marker)]}


# (where, step) → each would run code, write, or read files under stock MONAI; the marker is tmp/"ran".
STEPS = {
    "LoadImageD alias, reader=subprocess.call": lambda m: (
        "pre_transforms",
        {"name": "monai.transforms.LoadImageD", "args": {"keys": "image", "reader": "subprocess.call", **touch(m)}},
    ),
    "LoadImageDict alias, reader=os.system": lambda m: (
        "pre_transforms",
        {"name": "LoadImageDict", "args": {"keys": "image", "reader": "os.system", "command": f"touch {m}"}},
    ),
    "LoadImaged, reader=builtins.eval": lambda m: (
        "pre_transforms",
        {"name": "monai.transforms.LoadImaged", "args": {"keys": "image", "reader": "builtins.eval"}},
    ),
    "LoadImaged by module path, reader=eval": lambda m: (
        "pre_transforms",
        {"name": "monai.transforms.io.dictionary.LoadImaged", "args": {"keys": "image", "reader": "eval"}},
    ),
    "SaveImageD alias, output_dir": lambda m: (
        "post_transforms",
        {"name": "monai.transforms.SaveImageD", "args": {"keys": "pred", "output_dir": str(m.parent / "ran_dir")}},
    ),
    "SaveImaged, output_dir": lambda m: (
        "post_transforms",
        {"name": "SaveImaged", "args": {"keys": "pred", "output_dir": str(m.parent / "ran_dir")}},
    ),
    "LambdaD alias": lambda m: ("pre_transforms", {"name": "monai.transforms.LambdaD", "args": {"keys": "image"}}),
    "RandLambdaD alias": lambda m: ("pre_transforms", {"name": "RandLambdaD", "args": {"keys": "image"}}),
    "DataStatsD alias (logs the voxels)": lambda m: (
        "pre_transforms",
        {"name": "DataStatsD", "args": {"keys": "image"}},
    ),
    "CropForegroundd, select_fn=os.system": lambda m: (
        "pre_transforms",
        {"name": "CropForegroundd", "args": {"keys": "image", "source_key": "image", "select_fn": "os.system"}},
    ),
    "Activationsd, other=builtins.exec": lambda m: (
        "post_transforms",
        {"name": "Activationsd", "args": {"keys": "pred", "other": "builtins.exec"}},
    ),
    "EnsureTyped, dtype=subprocess.call": lambda m: (
        "pre_transforms",
        {"name": "EnsureTyped", "args": {"keys": "image", "dtype": "subprocess.call"}},
    ),
    "Spacingd with an argument it does not have": lambda m: (
        "pre_transforms",
        {"name": "Spacingd", "args": {"keys": "image", "pixdim": [4, 4, 4], "output_dir": str(m.parent)}},
    ),
    "ScaleIntensityRanged, a path as a key": lambda m: (
        "pre_transforms",
        {"name": "ScaleIntensityRanged", "args": {"keys": str(m), "a_min": 0, "a_max": 1}},
    ),
}


def test_the_config_payloads_are_real(tmp_path):
    """Under stock MONAI, the alias with a reader name runs the command (so the refusals below matter)."""
    marker = tmp_path / "ran"
    LoadImageD(keys="image", reader="subprocess.call", **touch(marker))
    assert marker.exists()


@pytest.mark.parametrize("case", list(STEPS))
def test_mmar_steps_that_would_run_code_or_touch_files_are_refused(tmp_path, case):
    marker = tmp_path / "ran"
    where, step = STEPS[case](marker)
    folder = mmar_with_step(tmp_path / "mmar", where, step)
    with pytest.raises(BadRequest) as refused:
        load_model(folder, "evil")
    assert len(refused.value.message.splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "ran_dir").exists()


@pytest.mark.parametrize("name", ["LoadImaged", "monai.transforms.LoadImageD", "LoadImageDict"])
def test_a_loader_under_any_alias_with_a_reader_of_monai_becomes_the_servers_loader(tmp_path, name):
    config = v4_config()
    config["pre_transforms"][0] = {"name": name, "args": {"keys": "image", "reader": "ITKReader"}}
    model = load_model(write(tmp_path, mmar_files(config)), "plain")
    assert type(model.task.pre_transforms()[0]).__name__ == "LoadServerImaged"
    mask, _ = run_model(model, smoke_image(), {})
    assert mask.shape == smoke_image().GetSize()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"network": {"name": "FlexibleUNet", "args": {"backbone": "os.system"}}}, "Network 'FlexibleUNet'"),
        ({"network": unet_network_section(act="subprocess.call")}, "names a Python object"),
        ({"inference": {"AIAA": {"name": "PatchInferer", "args": {"merger_cls": "ZarrAvgMerger"}}}}, "PatchInferer"),
        ({"inference": {"AIAA": {"name": "SimpleInferer", "args": {"nope": 1}}}}, "has no argument 'nope'"),
        ({"inference": {"AIAA": {"name": "SlidingWindowInfererAdapt", "args": {"mode": "/tmp/x"}}}}, "file path"),
    ],
)
def test_network_and_inferer_sections_are_held_to_the_same_rules(tmp_path, section, message):
    config = {**v4_config(network=unet_network_section()), **section}
    folder = write(tmp_path, mmar_files(config, kind="pt"))
    with pytest.raises(BadRequest, match=message):
        load_model(folder, "evil")


# ------------------------------------------------------------------------------------------- bundles


def bundle_with(tmp_path: Path, change) -> Path:
    files = bundle_files()
    config = json.loads(files["configs/inference.json"])
    change(config)
    files["configs/inference.json"] = json.dumps(config).encode()
    return write(tmp_path / "bundle", files)


def _transforms(config: dict, section: str = "preprocessing") -> list:
    return config[section]["transforms"]


BUNDLE_PAYLOADS = {
    "_target_ os.system": lambda c, m: _transforms(c).insert(1, {"_target_": "os.system", "command": f"touch {m}"}),
    "_target_ LoadImageD alias, reader subprocess.call": lambda c, m: _transforms(c).__setitem__(
        0, {"_target_": "LoadImageD", "keys": "image", "reader": "subprocess.call", **touch(m)}
    ),
    "reader through a reference": lambda c, m: (
        c.__setitem__("evil_reader", "subprocess.call"),
        _transforms(c).__setitem__(0, {"_target_": "LoadImaged", "keys": "image", "reader": "@evil_reader"}),
    ),
    "dotted name built by an expression": lambda c, m: _transforms(c).insert(
        1, {"_target_": "EnsureTyped", "keys": "image", "dtype": "$'subprocess' + '.call'"}
    ),
    "$__import__ expression": lambda c, m: _transforms(c)[3].__setitem__(
        "a_min", f"$__import__('os').system('touch {m}')"
    ),
    "% macro to a file": lambda c, m: c["inferer"].__setitem__("roi_size", "%/etc/passwd#x"),
    "% macro to the bundle's metadata": lambda c, m: c["inferer"].__setitem__("roi_size", "%configs/metadata.json#x"),
    "LambdaD alias in postprocessing": lambda c, m: _transforms(c, "postprocessing").insert(
        0, {"_target_": "LambdaD", "keys": "pred", "func": f"$lambda x: open('{m}', 'w')"}
    ),
    "reference cycle": lambda c, m: (
        c.__setitem__("a", "@b"),
        c.__setitem__("b", "@a"),
        c["inferer"].__setitem__("roi_size", "@a"),
    ),
    "path through a reference": lambda c, m: _transforms(c).insert(
        1, {"_target_": "EnsureTyped", "keys": "$@bundle_root + '/x'"}
    ),
    "network the allow-list does not hold": lambda c, m: c.__setitem__(
        "network_def", {"_target_": "FlexibleUNet", "in_channels": 1, "out_channels": 2, "backbone": "os.system"}
    ),
}


@pytest.mark.parametrize("case", list(BUNDLE_PAYLOADS))
def test_bundle_payloads_are_refused_before_anything_is_built(tmp_path, case, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "ran"
    folder = bundle_with(tmp_path, lambda config: BUNDLE_PAYLOADS[case](config, marker))
    with pytest.raises(BadRequest) as refused:
        load_model(folder, "evil")
    assert len(refused.value.message.splitlines()) == 1
    assert not marker.exists()


def test_a_bundle_writer_under_any_alias_is_dropped_unbuilt(tmp_path, monkeypatch):
    """MONAI's bundles end their post-processing with `SaveImaged`: it is dropped, never built or run."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "written"

    def writers(config):
        _transforms(config, "postprocessing")[-1] = {"_target_": "SaveImageD", "keys": "pred", "output_dir": str(out)}
        _transforms(config, "postprocessing").append({"_target_": "SaveImageDict", "keys": "pred", "output_dir": "/"})

    model = load_model(bundle_with(tmp_path, writers), "bundle")
    run_model(model, smoke_image(), smoke_inputs(model.type))
    assert not any(type(t).__name__.startswith("SaveImage") for t in model.task.post_transforms())
    assert not out.exists()


def test_bundle_references_share_one_built_instance(tmp_path, monkeypatch):
    """`Invertd(transform=@preprocessing)` gets the pipeline the task runs, as under MONAI's ConfigParser."""
    monkeypatch.chdir(tmp_path)
    model = load_model(write(tmp_path / "b", bundle_files()), "bundle")
    invert = next(t for t in model.task.post_transforms() if type(t).__name__ == "Invertd")
    assert [id(t) for t in invert.transform.transforms][1:] == [id(t) for t in model.task.pre_transforms()][1:]


# ---------------------------------------------------------------------------------------------- weights


def ts_folder(tmp_path: Path, data: bytes) -> Path:
    return write(tmp_path / "mmar", {**mmar_files(v4_config()), "models/model.ts": data})


def test_the_torchscript_payload_is_real(tmp_path):
    """`torch.jit.load` runs `__setstate__`: loading the archive creates the file (so inspecting first matters)."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ts"
    path.write_bytes(setstate_torchscript(str(marker)))
    torch.jit.load(str(path))
    assert marker.exists()


@pytest.mark.parametrize(
    "spelling",
    ["torch.from_file", "ops.aten.from_file", "torch.ops.aten.from_file", "torch . from_file"],
)
def test_torchscript_setstate_that_creates_a_file_is_refused_unloaded(tmp_path, spelling):
    marker = tmp_path / "ran"
    data = rewrite_torchscript(setstate_torchscript(str(marker)), "torch.from_file", spelling)
    with pytest.raises(BadRequest, match="from_file.*tensor math"):
        load_model(ts_folder(tmp_path, data), "evil")
    assert not marker.exists()


FROM_FILE = "torch.from_file(path, True, 16)"  # as the printed `__setstate__` of the payload calls it


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (FROM_FILE, "torch.ops.evil.op(path)", "ops.evil"),
        (FROM_FILE, "torch.save(path, path)", "save"),
        (FROM_FILE, "print(path)", "print"),
        (FROM_FILE, "__torch__.torch.classes.evil.Op(path)", "torch.classes"),
        (FROM_FILE, "exec(path)", "exec"),
        (FROM_FILE, "torch.zeros([16])\n    ops.prim.Print(path)", "Print"),
    ],
)
def test_torchscript_outside_aten_and_prim_is_refused(tmp_path, old, new, message):
    marker = tmp_path / "ran"
    data = rewrite_torchscript(setstate_torchscript(str(marker)), old, new)
    assert data != setstate_torchscript(str(marker))
    with pytest.raises(BadRequest, match=message):
        load_model(ts_folder(tmp_path, data), "evil")
    assert not marker.exists()


@pytest.mark.parametrize(
    "line",
    [
        "torch.distributed.barrier()",
        "y = input(x)",
        "torch.hub.load_state_dict_from_url(x)",
        "y = torch.cuda.memory_stats()",
        "y = map(x, x)",
    ],
)
def test_the_parsed_source_is_checked_beyond_the_text_scan(tmp_path, line):
    """What the raw text scan lets through, the syntax tree check refuses (and plain tensor math passes)."""
    source = "def f(x: Tensor) -> Tensor:\n  {}\n  return x\n"
    with pytest.raises(BadRequest, match="tensor math"):
        check_source(tmp_path / "model.ts", "code/__torch__/m.py", source.format(line))
    check_source(tmp_path / "model.ts", "code/__torch__/m.py", source.format("y = torch.add(x, math.pi)"))


def shout(x: torch.Tensor) -> torch.Tensor:
    print(x)
    return x


class Printer(torch.nn.Module):
    def forward(self, x):
        print(x)
        return x


class CallsAPrinter(torch.nn.Module):
    def forward(self, x):
        return shout(x)


def test_compiled_graphs_are_checked_after_loading_before_any_forward(tmp_path):
    """The second look: every method's graph of every submodule, calls inlined (prim::Print here)."""
    for printing in (Printer(), CallsAPrinter()):  # in a submodule's method, in a function a method calls
        module = torch.jit.script(torch.nn.Sequential(torch.nn.Identity(), printing))
        with pytest.raises(BadRequest, match="prim::Print"):
            check_loaded(tmp_path / "model.ts", module)
    check_loaded(tmp_path / "model.ts", torch.jit.script(tiny_unet()))  # a plain network passes


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_state_dict_pickle_with_a_payload_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "model.pt"
    torch.save({**tiny_unet().state_dict(), "payload": Payload(marker)}, path)
    files = {**mmar_files(v4_config(network=unet_network_section()), kind="pt"), "models/model.pt": path.read_bytes()}
    with pytest.raises(BadRequest, match="model.pt was refused"):
        load_model(write(tmp_path / "mmar", files), "evil")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"domain": "com.evil"}, "domain 'com.evil'"),
        ({"domain": "com.microsoft"}, "domain 'com.microsoft'"),
        ({"external": "/etc/passwd"}, "external file"),
        ({"external": "../../secrets.bin"}, "external file"),
    ],
)
def test_onnx_custom_operators_and_external_data_are_refused(tmp_path, kwargs, message):
    files = {**mmar_files(v4_config()), "models/model.onnx": onnx_with(**kwargs)}
    del files["models/model.ts"]
    with pytest.raises(BadRequest, match=message):
        load_model(write(tmp_path / "mmar", files), "evil")


def test_an_onnx_graph_of_standard_operators_loads(tmp_path):
    files = {**mmar_files(v4_config()), "models/model.onnx": onnx_with()}
    del files["models/model.ts"]
    model = load_model(write(tmp_path / "mmar", files), "plain")
    assert model.info()["engine"] == "onnxruntime"


# ---------------------------------------------------------------------------------------------- start-up


def installed_the_old_way(repo: Path, name: str, files: dict) -> Path:
    """A version folder as an older server committed it: files plus the marker, no check of today's."""
    folder = write(repo / f"{name}@{len(list(repo.iterdir())) + 1}", files)
    (folder / MARKER).write_text(json.dumps({"name": name, "format": "mmar"}))
    return folder


def plant_hostile_models(repo: Path, marker: Path) -> None:
    """Two models committed the old way whose payloads would create `marker`: `alias_reader` (a loader
    alias whose reader runs a command) and `setstate` (TorchScript whose __setstate__ writes a file)."""
    config = v4_config()
    config["pre_transforms"][0] = {
        "name": "monai.transforms.LoadImageD",
        "args": {"keys": "image", "reader": "subprocess.call", **touch(marker)},
    }
    installed_the_old_way(repo, "alias_reader", mmar_files(config))
    installed_the_old_way(
        repo, "setstate", {**mmar_files(v4_config()), "models/model.ts": setstate_torchscript(str(marker))}
    )


def test_models_installed_under_older_rules_are_revalidated_and_never_run(tmp_path, caplog):
    repo, marker = tmp_path / "repo", tmp_path / "ran"
    repo.mkdir()
    plant_hostile_models(repo, marker)
    plain = installed_the_old_way(repo, "plain", mmar_files(v4_config()))
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))

    with caplog.at_level(logging.ERROR, logger="server.registry"):
        registry = ModelRegistry.open(repo, REPO_ROOT / "apps" / "spleen", app_models="")

    assert [m.name for m in registry.list()] == ["plain"] and registry.get("plain").folder == plain
    assert set(registry.failed) == {"alias_reader", "setstate"}
    assert "subprocess.call" in registry.failed["alias_reader"] and "from_file" in registry.failed["setstate"]
    assert "not serving 'alias_reader'" in caplog.text and "not serving 'setstate'" in caplog.text
    assert not marker.exists()
    assert sorted(p.relative_to(repo) for p in repo.rglob("*") if not p.name.startswith(".")) == [
        p for p in before if not p.name.startswith(".")
    ]


def test_the_app_exports_and_plain_uploads_still_load(tmp_path, monkeypatch):
    """The rules refuse payloads, not models: a TorchScript, a state dict with its network and a bundle."""
    monkeypatch.chdir(tmp_path)
    for kind, config in (("ts", v4_config()), ("pt", v4_config(network=unet_network_section()))):
        model = load_model(write(tmp_path / kind, mmar_files(copy.deepcopy(config), kind=kind)), kind)
        mask, _ = run_model(model, smoke_image(), {})
        assert mask.shape == smoke_image().GetSize()
    bundle = load_model(write(tmp_path / "bundle", bundle_files()), "bundle")
    mask, _ = run_model(bundle, smoke_image(), {})
    assert bundle.source == "bundle" and mask.shape == smoke_image().GetSize()
