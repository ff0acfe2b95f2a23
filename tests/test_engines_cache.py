"""The session cache: a click on a session converts the image once and reuses each model's point-independent
pre-processing; cached data is never modified by a request, and cached runs give the uncached masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT

from aiaa_core.evaluation import centre_click, extreme_points
from aiaa_core.phantoms import LABELS, make_phantom
from aiaa_core.volumes import to_array
from server import inference
from server.registry import load_app_models
from server.sessions import Session


@pytest.fixture(scope="module")
def models():
    return {m.name: m for m in load_app_models(REPO_ROOT / "apps" / "spleen")}


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(500_030, size=(88, 80, 48), spacing=(3.5, 3.5, 4.0), orientation="RAS")


@pytest.fixture
def conversions(monkeypatch):
    """Count the image → MetaTensor conversions the server makes."""
    calls = []
    convert = inference.to_metatensor

    def counting(image):
        calls.append(image)
        return convert(image)

    monkeypatch.setattr(inference, "to_metatensor", counting)
    return calls


@pytest.fixture
def prepares(models, monkeypatch):
    """Count each task's point-independent pre-processing runs."""
    calls = []
    for model in models.values():
        prepare = model.task.prepare

        def counting(image, prepare=prepare, name=model.name):
            calls.append(name)
            return prepare(image)

        monkeypatch.setattr(model.task, "prepare", counting)
    return calls


def checksum(value) -> float:
    return float(torch.as_tensor(value).double().sum())


def test_clicks_on_a_session_convert_and_prepare_once(models, phantom, conversions, prepares):
    session = Session("s", phantom.image, Path("unused"), "ct", 60)
    truth = to_array(phantom.label) == LABELS["spleen"]
    clicks = [{"foreground": [centre_click(truth)], "background": []}]
    clicks.append({"foreground": [centre_click(truth), list(np.argwhere(truth)[0])], "background": []})
    masks = [inference.run_model(models["deepgrow_3d"], phantom.image, c, session=session)[0] for c in clicks]
    inference.run_model(models["extreme_points"], phantom.image, {"points": extreme_points(truth)}, session=session)
    assert len(conversions) == 1
    assert sorted(prepares) == ["deepgrow_3d", "extreme_points"]
    cached = session.cache["metatensor"]
    assert session.nbytes >= phantom.image.GetNumberOfPixels() * 2 + cached.numel() * cached.element_size()

    before = checksum(cached)
    again = inference.run_model(models["deepgrow_3d"], phantom.image, clicks[0], session=session)[0]
    assert session.cache["metatensor"] is cached and checksum(cached) == before  # reused, untouched
    assert len(conversions) == 1 and len(prepares) == 2
    np.testing.assert_array_equal(again, masks[0])

    uncached = inference.run_model(models["deepgrow_3d"], phantom.image, clicks[1])[0]  # no session
    np.testing.assert_array_equal(uncached, masks[1])
    assert len(conversions) == 2


def test_segmentation_resamples_a_session_once(models, phantom, conversions, prepares):
    session = Session("s", phantom.image, Path("unused"), "ct", 60)
    model = models["segmentation_spleen"]
    first, _ = inference.run_model(model, phantom.image, {}, session=session)
    prepared = session.cache[("prepared", model.name, id(model.task))]
    before = checksum(prepared["image"])
    second, result = inference.run_model(model, phantom.image, {}, session=session)
    assert prepares == ["segmentation_spleen"] and len(conversions) == 1
    assert checksum(prepared["image"]) == before
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(inference.run_model(model, phantom.image, {})[0], first)
    assert result["latencies"]["prepare"] < 1.0 and first.any()
