"""Engines: TorchScript and ONNX Runtime give eager PyTorch's masks; exports are cached by content; the model
object's `engine` key tells what really runs; engines built at once export one at a time; the engine
settings are passed in (no process-wide state) and reach the app's tasks through its MONAI Label conf; a
request's pacing is called before every forward; the app's segmentation post-processing (resampled only
around the object) gives the same mask as MONAI's full inversion."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from monai.transforms import AsDiscreted, EnsureTyped, KeepLargestConnectedComponentd

from aiaa_core import engines
from aiaa_core.evaluation import dice
from aiaa_core.phantoms import LABELS, make_phantom
from aiaa_core.transforms import RestoreGeometryd
from aiaa_core.volumes import to_array, to_metatensor
from lib.infers import SegmentationSpleen
from server.app_loader import app_configs
from server.registry import load_app_models

APP_DIR = REPO_ROOT / "apps" / "spleen"


@pytest.fixture
def engine_cache(tmp_path) -> engines.EngineSettings:
    """Default engine settings with a private export cache (passed to what builds: nothing to restore)."""
    return engines.EngineSettings(cache_dir=tmp_path / "engines")


def app_task(name: str, conf: dict[str, str]):
    """The app's task for `name`, built by its config class from a MONAI Label conf (as the server builds it)."""
    return app_configs(APP_DIR).load_configs(str(APP_DIR / "model"), {**conf, "models": name})[name].infer()


@pytest.fixture(scope="module")
def models():
    return {m.name: m for m in load_app_models(APP_DIR)}


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(500_001, size=(96, 84, 56), spacing=(3.2, 3.2, 4.0), orientation="LPS")


def trained_network(model) -> torch.nn.Module:
    network = copy.deepcopy(model.task.network)
    network.load_state_dict(torch.load(model.task.get_path(), map_location="cpu"))
    return network.eval()


def windowed_ct(phantom, shape=(64, 64, 48)) -> torch.Tensor:
    """A real CT-like network input: the phantom's centre, in the segmentation model's CT window."""
    array = to_array(phantom.image).astype(np.float32)
    starts = [(n - s) // 2 for n, s in zip(array.shape, shape, strict=True)]
    crop = array[tuple(slice(a, a + s) for a, s in zip(starts, shape, strict=True))]
    return torch.from_numpy(np.clip((crop + 160) / 400, 0, 1).copy())[None, None]


@pytest.mark.parametrize("name", ["torchscript", "onnxruntime"])
def test_engine_gives_eager_torchs_mask(engine_cache, models, phantom, name):
    network = trained_network(models["segmentation_spleen"])
    x = windowed_ct(phantom)
    with torch.no_grad():
        expected = network(x)
    engine = engines.build_engine(network, name, (1, 48, 48, 48), settings=engine_cache)  # exported at 48³
    assert engine.engine == name
    got = engine(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-3
    masks = got.argmax(1).numpy(), expected.argmax(1).numpy()
    assert masks[1].any()
    assert dice(*masks) >= 0.99


def test_export_is_cached_by_content(engine_cache, models):
    network = trained_network(models["deepgrow_3d"])
    engines.build_engine(network, "onnxruntime", (3, 32, 32, 32), settings=engine_cache)
    exports = list(engine_cache.cache_dir.glob("*.onnx"))
    assert len(exports) == 1
    stamp = exports[0].stat().st_mtime_ns
    same = engines.build_engine(copy.deepcopy(network), "onnxruntime", (3, 32, 32, 32), settings=engine_cache)
    assert list(engine_cache.cache_dir.glob("*.onnx")) == exports and exports[0].stat().st_mtime_ns >= stamp
    with torch.no_grad():
        next(network.parameters()).add_(0.01)  # new weights: a new export
    engines.build_engine(network, "onnxruntime", (3, 32, 32, 32), settings=engine_cache)
    assert len(list(engine_cache.cache_dir.glob("*.onnx"))) == 2
    assert same.engine == "onnxruntime"


def test_onnx_module_from_bytes_and_path(engine_cache, tmp_path):
    network = torch.nn.Sequential(torch.nn.Conv3d(2, 3, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.rand(1, 2, 8, 9, 10)
    path = tmp_path / "tiny.onnx"
    engines.export_onnx(network, x, path)
    with torch.no_grad():
        expected = network(x)
    for source in (path, path.read_bytes()):
        module = engines.OnnxModule(source, threads=1)
        assert module.engine == "onnxruntime"
        torch.testing.assert_close(module(x), expected, atol=1e-5, rtol=1e-4)


def test_engine_choice_order():
    assert engines.resolve_engine("auto", "cpu") == "onnxruntime"
    assert engines.resolve_engine("auto", "cuda:0") == "torch"
    settings = engines.EngineSettings("torchscript", {"deepgrow_3d": "torch"})
    assert engines.resolve_engine("auto", "cpu", "deepgrow_3d", settings) == "torch"  # the server's per-model choice
    assert engines.resolve_engine("auto", "cpu", "extreme_points", settings) == "torchscript"  # the server's default
    assert engines.resolve_engine("onnxruntime", "cpu", "deepgrow_3d", settings) == "onnxruntime"  # explicit
    assert engines.resolve_engine("auto", "cpu", "deepgrow_3d") == "onnxruntime"  # no settings: no hidden ones
    with pytest.raises(ValueError, match="unknown engine 'tensorrt'"):
        engines.check_engine("tensorrt")
    with pytest.raises(ValueError, match="unknown engine 'tensorrt'"):
        engines.EngineSettings(per_model={"deepgrow_3d": "tensorrt"})


def test_settings_round_trip_through_the_app_conf(tmp_path):
    settings = engines.EngineSettings("torchscript", {"deepgrow_3d": "torch"}, threads=3, cache_dir=tmp_path)
    conf = settings.app_conf("cpu")
    assert all(isinstance(value, str) for value in conf.values())  # MONAI Label conf values are strings
    assert engines.EngineSettings.from_conf(conf, "deepgrow_3d") == settings
    assert engines.EngineSettings.from_conf(conf, "extreme_points").choice("extreme_points") == "torchscript"
    assert engines.EngineSettings.from_conf({}) == engines.EngineSettings()  # stock MONAI Label: the defaults


def test_the_engine_key_tells_what_runs(engine_cache, models, phantom):
    model = models["extreme_points"]
    assert model.info()["engine"] == "onnxruntime"
    conf = engines.EngineSettings(per_model={"extreme_points": "torch"}, cache_dir=engine_cache.cache_dir)
    fresh = app_task("extreme_points", conf.app_conf("cpu"))
    assert fresh.engine == "torch"
    fresh.warm_up()
    assert isinstance(fresh._get_network("cpu", None), engines.TorchModule)
    assert fresh.engine == "torch"


def test_app_tasks_read_device_and_engine_from_the_conf(tmp_path):
    """The app's tasks do not look for CUDA themselves: the server's device setting decides."""
    settings = engines.EngineSettings("torchscript", threads=1, cache_dir=tmp_path)
    on_cuda = app_task("deepgrow_3d", settings.app_conf("cuda:0"))  # no GPU needed: nothing is built
    on_cpu = app_task("deepgrow_3d", settings.app_conf("cpu"))
    assert (on_cuda.device, on_cpu.device) == ("cuda:0", "cpu")
    assert on_cuda.engine == on_cpu.engine == "torchscript"
    assert on_cpu.engines.threads == 1 and on_cpu.engines.cache_dir == tmp_path
    stock = app_task("deepgrow_3d", {})  # stock `monailabel start_server`: MONAI Label's device rule, `auto`
    assert stock.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert stock.engine == engines.resolve_engine("auto", stock.device)


def test_a_request_pacing_is_called_before_every_forward(engine_cache, models):
    network = trained_network(models["deepgrow_3d"])
    engine = engines.build_engine(network, "onnxruntime", (3, 32, 32, 32), settings=engine_cache)
    calls, share = [], engines.ThreadShare(4)
    pacing = engines.Pacing(lambda: calls.append(share.running), share)
    request = {engines.PACING: pacing}
    paced = engines.paced(engine, request)
    assert paced.engine == "onnxruntime" and engines.paced(engine, {}) is engine
    x = torch.rand(1, 3, 32, 32, 32)
    torch.testing.assert_close(paced(x), engine(x))
    paced(x)
    assert calls == [0, 0]  # before each forward, before it took its share of the threads
    assert copy.deepcopy(request)[engines.PACING] is pacing  # MONAI Label deep-copies requests: the same handle


class InverseThenArgmax(SegmentationSpleen):
    """The post-processing the app had before: MONAI inverts Orientationd/Spacingd on the full logits."""

    def inverse_transforms(self, data=None):
        return []

    def post_transforms(self, data=None):
        return [
            AsDiscreted(keys="pred", argmax=True),
            KeepLargestConnectedComponentd(keys="pred", applied_labels=[1]),
            EnsureTyped(keys="pred", dtype="uint8", data_type="numpy"),
            RestoreGeometryd(keys="pred"),
        ]


@pytest.mark.parametrize("orientation", ["LPS", "oblique"])
def test_segmentation_resampled_around_the_object_equals_full_inversion(models, orientation):
    phantom = make_phantom(500_010, size=(80, 72, 40), spacing=(3.0, 3.0, 4.5), orientation=orientation)
    task = models["segmentation_spleen"].task
    reference = InverseThenArgmax(path=task.path, network=task.network, engine="torch")
    request = {"skip_writer": True, "device": "cpu"}
    _, ours = task({**request, "image": to_metatensor(phantom.image)})
    _, full = reference({**request, "image": to_metatensor(phantom.image)})
    mask, expected = np.asarray(ours["pred"]), np.asarray(full["pred"])
    truth = to_array(phantom.label) == LABELS["spleen"]
    assert mask.shape == expected.shape == truth.shape and mask.flags.f_contiguous
    assert expected.any() and dice(mask, expected) >= 0.99
    box = ours["pred_box"]
    outside = mask.copy()
    outside[tuple(slice(a, b) for a, b in box)] = 0
    assert not outside.any()  # the box the server describes the mask within holds all of it


def test_concurrent_forwards_share_the_threads():
    share, other = engines.ThreadShare(4), engines.ThreadShare(4)
    with share.forward() as alone:
        with share.forward() as second:
            with share.forward() as third, other.forward() as elsewhere:
                assert (alone, second, third) == (4, 2, 1)
                assert elsewhere == 4  # another scheduler's share is its own
    with share.forward() as again:
        assert again == 4


def test_engines_built_at_once_export_one_at_a_time(engine_cache, monkeypatch):
    """Two models' first requests build their engines at the same moment: torch.onnx.export keeps process-wide
    state, so the exports must take turns (each waits up to 1 s for the other to join it), and both engines
    must still give their own network's output."""
    real_export, active, peak, both_in = torch.onnx.export, [0], [0], threading.Event()
    guard = threading.Lock()

    def watched_export(*args, **kwargs):
        with guard:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            if active[0] == 2:
                both_in.set()
        both_in.wait(timeout=1.0)  # without the lock the other thread arrives here within this second
        try:
            return real_export(*args, **kwargs)
        finally:
            with guard:
                active[0] -= 1

    monkeypatch.setattr(torch.onnx, "export", watched_export)
    networks = [torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.Sigmoid()).eval() for _ in range(2)]
    built, errors = [None, None], []

    def build(index: int) -> None:
        try:
            built[index] = engines.build_engine(networks[index], "onnxruntime", (1, 8, 8, 8), settings=engine_cache)
        except Exception as error:  # reaches the assertion below
            errors.append(error)

    threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert peak[0] == 1
    x = torch.rand(1, 1, 8, 8, 8)
    for network, engine in zip(networks, built, strict=True):
        with torch.no_grad():
            torch.testing.assert_close(engine(x), network(x), atol=1e-5, rtol=1e-4)
