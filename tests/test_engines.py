"""Engines: TorchScript and ONNX Runtime give eager PyTorch's masks; exports are cached by content; the model
object's `engine` key tells what really runs; the app's segmentation post-processing (resampled only around
the object) gives the same mask as MONAI's full inversion."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from monai.transforms import AsDiscreted, EnsureTyped, KeepLargestConnectedComponentd

from aiaa_core.evaluation import dice
from lib.infers import SegmentationSpleen
from aiaa_core.transforms import RestoreGeometryd
from server import engines
from server.imageio import to_array, to_metatensor
from aiaa_core.phantoms import LABELS, make_phantom
from server.registry import load_app_models

APP_DIR = REPO_ROOT / "apps" / "spleen"


@pytest.fixture
def engine_cache(tmp_path):
    """A private export cache and default engine settings; the process-wide settings are restored after."""
    saved = engines.current
    engines.configure(cache_dir=tmp_path / "engines")
    yield tmp_path / "engines"
    engines.current = saved
    torch.set_num_threads(engines.engine_threads())


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
    engine = engines.build_engine(network, name, (1, 48, 48, 48))  # exported at 48³, run at another size
    assert engine.engine == name
    got = engine(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-3
    masks = got.argmax(1).numpy(), expected.argmax(1).numpy()
    assert masks[1].any()
    assert dice(*masks) >= 0.99


def test_export_is_cached_by_content(engine_cache, models):
    network = trained_network(models["deepgrow_3d"])
    engines.build_engine(network, "onnxruntime", (3, 32, 32, 32))
    exports = list(engine_cache.glob("*.onnx"))
    assert len(exports) == 1
    stamp = exports[0].stat().st_mtime_ns
    same = engines.build_engine(copy.deepcopy(network), "onnxruntime", (3, 32, 32, 32))
    assert list(engine_cache.glob("*.onnx")) == exports and exports[0].stat().st_mtime_ns >= stamp
    with torch.no_grad():
        next(network.parameters()).add_(0.01)  # new weights: a new export
    engines.build_engine(network, "onnxruntime", (3, 32, 32, 32))
    assert len(list(engine_cache.glob("*.onnx"))) == 2
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


def test_engine_choice_order(engine_cache):
    assert engines.resolve_engine("auto", "cpu") == "onnxruntime"
    assert engines.resolve_engine("auto", "cuda:0") == "torch"
    engines.configure("torchscript", {"deepgrow_3d": "torch"}, cache_dir=engine_cache)
    assert engines.resolve_engine("auto", "cpu", "deepgrow_3d") == "torch"  # the server's per-model choice
    assert engines.resolve_engine("auto", "cpu", "extreme_points") == "torchscript"  # the server's default
    assert engines.resolve_engine("onnxruntime", "cpu", "deepgrow_3d") == "onnxruntime"  # the model's own config
    with pytest.raises(ValueError, match="unknown engine 'tensorrt'"):
        engines.check_engine("tensorrt")


def test_the_engine_key_tells_what_runs(engine_cache, models, phantom):
    model = models["extreme_points"]
    assert model.info()["engine"] == "onnxruntime"
    engines.configure(per_model={"extreme_points": "torch"}, cache_dir=engine_cache)
    fresh = load_app_models(APP_DIR, "extreme_points")[0]
    assert fresh.info()["engine"] == "torch"
    fresh.task.warm_up()
    assert isinstance(fresh.task._get_network("cpu", None), engines.TorchModule)
    assert fresh.info()["engine"] == "torch"


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


def test_concurrent_forwards_share_the_threads(engine_cache):
    engines.configure(threads=4, cache_dir=engine_cache)
    with engines.threads_for_this_forward() as alone:
        with engines.threads_for_this_forward() as second:
            with engines.threads_for_this_forward() as third:
                assert (alone, second, third) == (4, 2, 1)
    with engines.threads_for_this_forward() as again:
        assert again == 4
