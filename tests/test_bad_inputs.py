"""Bad input gets the documented 4xx and a message a clinician understands; the server carries on."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from aiaa_core.phantoms import make_phantom, write_phantom

MODEL = "segmentation_spleen"


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory):
    image, _ = write_phantom(make_phantom(7, size=(64, 56, 40), spacing=(4.0, 4.0, 4.0)), tmp_path_factory.mktemp("p"))
    return image


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def truncated(path) -> bytes:
    data = gzip.decompress(path.read_bytes())
    return gzip.compress(data)[: len(gzip.compress(data)) // 2]


def bad_requests(phantom: Path) -> dict[str, tuple]:
    """name → (model, files, params field, expected status, fragments the message must contain)."""
    good = {"datapoint": (phantom.name, phantom.read_bytes())}
    return {
        "garbage": (MODEL, {"datapoint": ("ct.nii.gz", b"\x00\x13garbage" * 100)}, "{}", 400, ["ct.nii.gz", "NIfTI"]),
        "truncated": (MODEL, {"datapoint": ("ct.nii.gz", truncated(phantom))}, "{}", 400, ["damaged or truncated"]),
        "empty": (MODEL, {"datapoint": ("ct.nii.gz", b"")}, "{}", 400, ["ct.nii.gz", "empty"]),
        "png-2d": (MODEL, {"datapoint": ("slice.png", png_bytes())}, "{}", 400, ["3D volume", "2D"]),
        "unsupported": (MODEL, {"datapoint": ("notes.txt", b"hello")}, "{}", 415, ["Unsupported file type", ".txt"]),
        "unknown-model": ("no_such_model", good, "{}", 404, ["no_such_model", "segmentation_spleen"]),
        "missing-file": (MODEL, {}, "{}", 400, ["No image", "datapoint"]),
        "bad-params": (MODEL, good, "{not json", 400, ["params", "JSON"]),
    }


CASES = ["garbage", "truncated", "empty", "png-2d", "unsupported", "unknown-model", "missing-file", "bad-params"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_clearly(live_server, phantom_file, case):
    model, files, params, status, fragments = bad_requests(phantom_file)[case]
    reply = requests.post(
        f"{live_server.url}/v1/segmentation", params={"model": model}, files=files, data={"params": params}, timeout=60
    )
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["success"] is False
    for fragment in fragments:
        assert fragment in body["error"]["message"]
    # the server still answers the next good request, and bad input never logs a traceback
    assert requests.get(f"{live_server.url}/v1/models", timeout=10).status_code == 200
    assert "Traceback" not in (live_server.log_dir / "aiaa.log").read_text()


def test_models_listing(live_server):
    models = requests.get(f"{live_server.url}/v1/models", timeout=10).json()
    spleen = next(m for m in models if m["name"] == MODEL)
    assert spleen["type"] == "segmentation" and spleen["labels"] == ["spleen"]
    assert isinstance(spleen["version"], str) and spleen["description"]
    one = requests.get(f"{live_server.url}/v1/models", params={"model": MODEL}, timeout=10).json()
    assert one["name"] == MODEL
    assert requests.get(f"{live_server.url}/v1/models", params={"label": "SPLEEN"}, timeout=10).json()
    assert requests.get(f"{live_server.url}/v1/models", params={"type": "deepgrow2d"}, timeout=10).json() == []
    unknown = requests.get(f"{live_server.url}/v1/models", params={"model": "nope"}, timeout=10)
    assert unknown.status_code == 404 and unknown.json()["success"] is False
    assert unknown.headers["Server"] == "aiaa"  # waitress (ident=aiaa), not the Flask dev server
