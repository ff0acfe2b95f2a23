"""Uploaded models take the app's fast path: at install (and warm-up) the network moves to the engine the
server chooses when that engine's output matches the upload's own within a tolerance, checked on a
bounded input; and a session's point-independent pre-processing is computed once, then reused by every
later request (segmentations and clicks) on that image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from model_archives import bundle_files, mmar_files, tiny_unet, v4_config
from model_archives import write_folder as write
from monai.inferers import SimpleInferer, SlidingWindowInferer
from monai.transforms import Spacingd

from aiaa_core.engines import EngineSettings, TorchModule
from aiaa_core.mask_geometry import dice
from aiaa_core.phantoms import make_phantom
from server.inference import run_model, warm_up
from server.model_formats import fast_path, load_model
from server.registry import ModelRegistry
from server.sessions import Session
from tests.test_model_formats import GuidedThresholdNet, clara4_deepgrow_config, write_mmar

APP_DIR = REPO_ROOT / "apps" / "spleen"
UPLOADS = {  # name → (files, format, the engine it runs on as uploaded)
    "bundle_state_dict": (lambda: bundle_files(("spleen",)), "bundle", "torch"),
    "mmar_torchscript": (lambda: mmar_files(v4_config()), "mmar", "torchscript"),
    "mmar_state_dict": (lambda: mmar_files(state_dict_config(), "pt"), "mmar", "torch"),
}


def state_dict_config() -> dict:
    config = v4_config()
    config["inference"]["network"] = {
        "name": "monai.networks.nets.UNet",
        "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8, 16], "strides": [2, 2],
                 "num_res_units": 1},
    }  # fmt: skip
    return config


@pytest.fixture(scope="module")
def ct():
    return make_phantom(3, size=(72, 64, 40), spacing=(2.5, 2.5, 4.0)).image


@pytest.fixture
def engines(tmp_path) -> EngineSettings:
    return EngineSettings(cache_dir=tmp_path / "engine-cache")  # `auto`, exports kept out of the user's cache


def install(registry: ModelRegistry, name: str, files: dict, fmt: str):
    with registry.staging() as work:
        return registry.install(name, write(work / "model", files), fmt)


@pytest.mark.parametrize("upload", list(UPLOADS))
def test_an_installed_upload_runs_on_the_checked_engine_and_gives_the_eager_mask(tmp_path, ct, engines, upload):
    files, fmt, as_uploaded = UPLOADS[upload]
    files = files()
    registry = ModelRegistry(tmp_path / "repo", engines=engines)

    model = install(registry, upload, files, fmt)

    assert model.info()["engine"] == "onnxruntime"  # /v1/models shows what runs it
    assert "max error" in model.task.engine_note
    eager = load_model(write(tmp_path / "eager", files), "eager", engines=EngineSettings(default="torch"))
    eager.task.warm_up("cpu")
    assert eager.info()["engine"] == as_uploaded  # `--engine torch`: the upload as it came
    fast_mask, _ = run_model(model, ct, {})
    eager_mask, _ = run_model(eager, ct, {})
    assert fast_mask.shape == eager_mask.shape == ct.GetSize()
    assert (fast_mask != eager_mask).mean() < 1e-4 and (not eager_mask.any() or dice(fast_mask, eager_mask) > 0.999)

    reopened = ModelRegistry.open(tmp_path / "repo", APP_DIR, app_models="", engines=engines)
    assert reopened.get(upload).info()["engine"] == as_uploaded  # loaded, not yet warmed up
    warm_up(reopened.list())
    assert reopened.get(upload).info()["engine"] == "onnxruntime"  # start-up chooses it again


def test_an_export_that_does_not_match_is_not_used(tmp_path, engines, monkeypatch):
    """ONNX Runtime off by more than the tolerance → TorchScript; both off → the upload as it came."""
    real_build = fast_path.build_engine
    wrong: set[str] = set()

    class Off(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.engine = inner, inner.engine

        def forward(self, x, pacing=None):
            return self.inner(x) + 0.1

    def build(network, engine, *args, **kwargs):
        built = real_build(network, engine, *args, **kwargs)
        return Off(built) if engine in wrong else built

    monkeypatch.setattr(fast_path, "build_engine", build)
    registry = ModelRegistry(tmp_path / "repo", engines=engines)
    wrong.add("onnxruntime")
    assert install(registry, "one_off", bundle_files(), "bundle").info()["engine"] == "torchscript"
    wrong.add("torchscript")
    model = install(registry, "both_off", bundle_files(), "bundle")
    assert model.info()["engine"] == "torch" and "no faster engine matched" in model.task.engine_note


def test_the_check_is_bounded_and_torch_means_as_uploaded(tmp_path, engines, monkeypatch):
    built = []
    monkeypatch.setattr(fast_path, "build_engine", lambda *a, **k: built.append(a) or pytest.fail("built"))
    files = bundle_files()
    config = json.loads(files["configs/inference.json"])
    config["inferer"]["roi_size"] = [256, 256, 256]  # 16.8 M voxels: over the check's bound
    files["configs/inference.json"] = json.dumps(config).encode()
    model = load_model(write(tmp_path / "huge", files), "huge", engines=engines)
    assert fast_path.check_shape(model.task._network.module, model.task.inferer()) is None
    model.task.warm_up("cpu")
    assert model.info()["engine"] == "torch" and "no bounded input" in model.task.engine_note

    eager = load_model(write(tmp_path / "plain", bundle_files()), "plain", engines=EngineSettings(default="torch"))
    eager.task.warm_up("cpu")
    assert eager.info()["engine"] == "torch" and not built

    monkeypatch.setattr(fast_path, "MAX_CHECK_S", 0.0)  # an upload whose own forward is too slow to check
    slow = load_model(write(tmp_path / "slow", bundle_files()), "slow", engines=engines)
    slow.task.warm_up("cpu")
    assert slow.info()["engine"] == "torch" and "not exported" in slow.task.engine_note and not built


def test_check_shape_reads_the_window_and_the_first_convolution():
    unet = tiny_unet()
    window = SlidingWindowInferer(roi_size=[32, 48, 16])
    assert fast_path.check_shape(unet, window) == (1, 32, 48, 16)
    assert fast_path.check_shape(GuidedThresholdNet(), SimpleInferer()) == (3, 64, 64, 64)
    assert fast_path.check_shape(torch.nn.Identity(), window) is None  # nothing to read the channels from


def count_spacing_calls(monkeypatch) -> list:
    calls = []
    real = Spacingd.__call__

    def counted(self, data, *args, **kwargs):
        calls.append(1)
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Spacingd, "__call__", counted)
    return calls


def test_a_session_prepares_an_uploaded_segmentation_once(tmp_path, ct, engines, monkeypatch):
    model = load_model(write(tmp_path / "bundle", bundle_files()), "bundle", engines=engines)
    assert [type(t).__name__ for t in model.task._point_free][-3:] == [
        "Spacingd",
        "ScaleIntensityRanged",
        "EnsureTyped",
    ]
    alone, _ = run_model(model, ct, {})
    calls = count_spacing_calls(monkeypatch)
    session = Session("s", ct, tmp_path / "session", "ct", 60)

    first, _ = run_model(model, ct, {}, session=session)
    second, _ = run_model(model, ct, {}, session=session)

    assert len(calls) == 1  # the second request reused the session's pre-processing
    assert np.array_equal(first, alone) and np.array_equal(second, alone)


def test_a_second_click_on_a_session_reuses_the_prepared_image(tmp_path, ct, engines, monkeypatch):
    model = load_model(
        write_mmar(tmp_path, clara4_deepgrow_config(), module=GuidedThresholdNet()), "dg", engines=engines
    )
    assert [type(t).__name__ for t in model.task._point_free][-1] == "Spacingd"  # the click-free prefix
    clicks = [[30, 30, 20], [45, 25, 18]]
    alone = [run_model(model, ct, {"foreground": [c], "background": []})[0] for c in clicks]
    calls = count_spacing_calls(monkeypatch)
    session = Session("s", ct, tmp_path / "session", "ct", 60)

    masks = [run_model(model, ct, {"foreground": [c], "background": []}, session=session)[0] for c in clicks]

    assert len(calls) == 1  # resampled for the first click only
    assert all(np.array_equal(m, a) for m, a in zip(masks, alone, strict=True))
    assert not np.array_equal(masks[0], masks[1])  # each click its own answer


def test_uploaded_onnx_is_served_as_it_came(tmp_path, engines, monkeypatch):
    monkeypatch.setattr(fast_path, "build_engine", lambda *a, **k: pytest.fail("an ONNX upload is not re-exported"))
    files = {**mmar_files(v4_config()), "models/model.onnx": mmar_files(v4_config(), "onnx")["models/model.onnx"]}
    del files["models/model.ts"]
    model = load_model(write(tmp_path / "onnx", files), "onnx", engines=engines)
    model.task.warm_up("cpu")
    assert model.info()["engine"] == "onnxruntime" and not isinstance(model.task._network, TorchModule)


def test_a_network_that_fails_on_the_check_input_is_left_to_the_smoke_test(engines):
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 2, 1)

        def forward(self, x):
            raise RuntimeError("not this shape")

    uploaded = TorchModule(Broken())
    chosen, note = fast_path.choose_engine(uploaded, (1, 16, 16, 16), engines, "cpu", "broken")
    assert chosen is uploaded and "no check" in note  # not a 500 at install: the smoke test answers 400
