"""An uploaded model's weights can run nothing but tensor math: TorchScript whose `__setstate__` or graph
would call outside aten/prim, state-dict pickles with a payload and ONNX custom operators or external data are
refused before anything of them runs; models installed under older rules that fail today's checks are not
served at start-up. Every payload is live (see the `*_payload_is_real` test) and would create a marker file.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from model_archives import (
    bundle_files,
    installed_the_old_way,
    mmar_files,
    onnx_with,
    plant_hostile_models,
    rewrite_torchscript,
    setstate_torchscript,
    tiny_unet,
    unet_network_section,
    v4_config,
    write_folder,
)

from server.errors import BadRequest
from server.inference import run_model
from server.model_formats import load_model
from server.model_formats.torchscript import check_loaded, check_source
from server.registry import ModelRegistry, smoke_image


def ts_folder(tmp_path: Path, data: bytes) -> Path:
    return write_folder(tmp_path / "mmar", {**mmar_files(v4_config()), "models/model.ts": data})


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
        load_model(write_folder(tmp_path / "mmar", files), "evil")
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
        load_model(write_folder(tmp_path / "mmar", files), "evil")


def test_an_onnx_graph_of_standard_operators_loads(tmp_path):
    files = {**mmar_files(v4_config()), "models/model.onnx": onnx_with()}
    del files["models/model.ts"]
    model = load_model(write_folder(tmp_path / "mmar", files), "plain")
    assert model.info()["engine"] == "onnxruntime"


# ---------------------------------------------------------------------------------------------- start-up


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
        model = load_model(write_folder(tmp_path / kind, mmar_files(copy.deepcopy(config), kind=kind)), kind)
        mask, _ = run_model(model, smoke_image(), {})
        assert mask.shape == smoke_image().GetSize()
    bundle = load_model(write_folder(tmp_path / "bundle", bundle_files()), "bundle")
    mask, _ = run_model(bundle, smoke_image(), {})
    assert bundle.source == "bundle" and mask.shape == smoke_image().GetSize()
