"""An uploaded model's config can run nothing but tensor math: MMAR and bundle configs whose steps would run
code, read or write files are refused before anything of them is built; plain configs and loader aliases
with MONAI's readers still load.

Every payload here is live (it runs under stock MONAI: see the `*_payloads_are_real` test) and would create a
marker file in the test's tmp folder; each test asserts the refusal and that the marker does not exist.
Weights (TorchScript, state dicts, ONNX) and the start-up re-validation: test_upload_code_execution_weights.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from model_archives import (
    bundle_files,
    changed_bundle,
    mmar_files,
    touch,
    unet_network_section,
    v4_config,
    write_folder,
)
from monai.transforms import LoadImageD

from server.errors import BadRequest
from server.inference import run_model
from server.model_formats import load_model
from server.registry import smoke_image, smoke_inputs


def mmar_with_step(folder: Path, where: str, step: dict, **config) -> Path:
    body = v4_config(**config)
    body[where].insert(1, step)
    return write_folder(folder, mmar_files(body))


def pre(name: str, **args) -> tuple[str, dict]:
    """A pre-transform step (where, step) named `name` with these args."""
    return "pre_transforms", {"name": name, "args": args}


def post(name: str, **args) -> tuple[str, dict]:
    return "post_transforms", {"name": name, "args": args}


# marker → (where, step): each would run code, write, or read files under stock MONAI; the marker is tmp/"ran".
STEPS = {
    "LoadImageD alias, reader=subprocess.call": lambda m: pre(
        "monai.transforms.LoadImageD", keys="image", reader="subprocess.call", **touch(m)
    ),
    "LoadImageDict alias, reader=os.system": lambda m: pre(
        "LoadImageDict", keys="image", reader="os.system", command=f"touch {m}"
    ),
    "LoadImaged, reader=builtins.eval": lambda m: pre(
        "monai.transforms.LoadImaged", keys="image", reader="builtins.eval"
    ),
    "LoadImaged by module path, reader=eval": lambda m: pre(
        "monai.transforms.io.dictionary.LoadImaged", keys="image", reader="eval"
    ),
    "SaveImageD alias, output_dir": lambda m: post(
        "monai.transforms.SaveImageD", keys="pred", output_dir=str(m.parent / "ran_dir")
    ),
    "SaveImaged, output_dir": lambda m: post("SaveImaged", keys="pred", output_dir=str(m.parent / "ran_dir")),
    "LambdaD alias": lambda m: pre("monai.transforms.LambdaD", keys="image"),
    "RandLambdaD alias": lambda m: pre("RandLambdaD", keys="image"),
    "DataStatsD alias (logs the voxels)": lambda m: pre("DataStatsD", keys="image"),
    "CropForegroundd, select_fn=os.system": lambda m: pre(
        "CropForegroundd", keys="image", source_key="image", select_fn="os.system"
    ),
    "Activationsd, other=builtins.exec": lambda m: post("Activationsd", keys="pred", other="builtins.exec"),
    "EnsureTyped, dtype=subprocess.call": lambda m: pre("EnsureTyped", keys="image", dtype="subprocess.call"),
    "Spacingd with an argument it does not have": lambda m: pre(
        "Spacingd", keys="image", pixdim=[4, 4, 4], output_dir=str(m.parent)
    ),
    "ScaleIntensityRanged, a path as a key": lambda m: pre("ScaleIntensityRanged", keys=str(m), a_min=0, a_max=1),
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
    model = load_model(write_folder(tmp_path, mmar_files(config)), "plain")
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
    folder = write_folder(tmp_path, mmar_files(config, kind="pt"))
    with pytest.raises(BadRequest, match=message):
        load_model(folder, "evil")


# ------------------------------------------------------------------------------------------- bundles


def bundle_with(tmp_path: Path, change) -> Path:
    return write_folder(tmp_path / "bundle", changed_bundle(change))


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
    model = load_model(write_folder(tmp_path / "b", bundle_files()), "bundle")
    invert = next(t for t in model.task.post_transforms() if type(t).__name__ == "Invertd")
    assert [id(t) for t in invert.transform.transforms][1:] == [id(t) for t in model.task.pre_transforms()][1:]
