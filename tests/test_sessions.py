"""Against a real server process configured with small limits: sessions (create → use → expire → 440,
DICOM series, the reaper, no mixing, the memory cap), the upload limit, a URL prefix, output modes."""

from __future__ import annotations

import time
import zipfile

import pytest
import requests
import SimpleITK as sitk
import torch
from aiaa_helpers import assert_same_grid, parse_result, post, read_mask, to_ijk
from conftest import start_server, stop_server
from image_fixtures import write_dicom_series

from aiaa_core.evaluation import centre_click, dice
from aiaa_core.phantoms import LABELS, make_phantom, write_phantom
from server.sessions import SessionStore

MAX_EXPIRY_S = 30
MAX_UPLOAD_MB = 20
DEADLINE_S = 30


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = start_server(
        tmp_path_factory.mktemp("sessions"),
        "--session-max-expiry",
        str(MAX_EXPIRY_S),
        "--session-expiry",
        str(MAX_EXPIRY_S),
        "--session-reap-interval",
        "0.2",
        "--session-max-mb",
        "40",
        "--max-upload-mb",
        str(MAX_UPLOAD_MB),
        "--url-prefix",
        "/aiaa",
    )
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("phantoms")
    a = make_phantom(400_001, size=(96, 84, 56), spacing=(3.5, 3.5, 3.5), orientation="LPS")
    b = make_phantom(400_002, size=(80, 72, 60), spacing=(4.0, 4.0, 3.0), orientation="oblique")
    return [(p, write_phantom(p, tmp, stem=f"p{i}")[0]) for i, p in enumerate((a, b))]


def create(url: str, files, **query) -> dict:
    reply = requests.put(f"{url}/session/", params=query, files=files, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()


def until(predicate, what: str) -> None:
    """Wait (bounded) for a time-driven outcome: expiry is the feature under test here."""
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_session_is_used_for_many_clicks_then_expires(server, phantoms, tmp_path):
    # The clicks run on a session with the longest expiry, so a busy machine cannot expire it between
    # clicks; expiry itself is watched on a second session created with a 1 s expiry.
    phantom, path = phantoms[0]
    created = create(server.url, {"image": (path.name, path.read_bytes())}, expiry=MAX_EXPIRY_S)
    session_id, info = created["session_id"], created["session_info"]
    assert info["size"] == list(phantom.image.GetSize()) and info["expiry"] == MAX_EXPIRY_S
    assert (server.session_dir / session_id).is_dir()

    truth = to_ijk(phantom.label) == LABELS["spleen"]
    clicks = {"foreground": [centre_click(truth)], "background": []}
    for _ in range(3):  # no file part: the server uses the session's decoded image
        _, name, data = parse_result(post(server.url, "deepgrow", "deepgrow_3d", [], clicks, session_id=session_id))
        mask = read_mask(data, name, tmp_path)
        assert_same_grid(mask, phantom.image)
    assert dice(to_ijk(mask), truth) > 0.5
    assert requests.delete(f"{server.url}/session/{session_id}", timeout=10).status_code == 200

    short = create(server.url, {"image": (path.name, path.read_bytes())}, expiry=1)
    session_id = short["session_id"]
    assert short["session_info"]["expiry"] == 1
    until(lambda: requests.get(f"{server.url}/session/{session_id}", timeout=10).status_code == 404, "expiry")
    expired = post(server.url, "deepgrow", "deepgrow_3d", [], clicks, session_id=session_id)
    assert expired.status_code == 440 and "expired" in expired.json()["error"]["message"]
    until(lambda: not (server.session_dir / session_id).exists(), "the reaper to delete the files")


def test_expiry_is_capped_and_slides_on_use(server, phantoms):
    _, path = phantoms[0]
    created = create(server.url, {"image": (path.name, path.read_bytes())}, expiry=100_000)
    assert created["session_info"]["expiry"] == MAX_EXPIRY_S
    session_id = created["session_id"]
    first = requests.get(f"{server.url}/session/{session_id}", timeout=10).json()["last_access_ts"]
    touched = requests.get(f"{server.url}/session/{session_id}", params={"update_ts": "true"}, timeout=10).json()
    assert touched["last_access_ts"] >= first
    assert requests.delete(f"{server.url}/session/{session_id}", timeout=10).status_code == 200
    assert requests.get(f"{server.url}/session/{session_id}", timeout=10).status_code == 404


def test_dicom_series_session(server, phantoms, tmp_path):
    phantom, _ = phantoms[0]
    files = write_dicom_series(phantom.image, tmp_path / "dicom")
    created = create(server.url, [(f"image{i}", (f.name, f.read_bytes())) for i, f in enumerate(files)])
    assert created["session_info"]["size"] == list(phantom.image.GetSize())
    _, name, data = parse_result(
        post(server.url, "segmentation", "segmentation_spleen", [], session_id=created["session_id"])
    )
    assert_same_grid(read_mask(data, name, tmp_path), phantom.image)


def test_two_sessions_never_mix(server, phantoms, tmp_path):
    ids = [create(server.url, {"image": (p.name, p.read_bytes())})["session_id"] for _, p in phantoms]
    for (phantom, _), session_id in zip(reversed(phantoms), reversed(ids), strict=True):
        _, name, data = parse_result(post(server.url, "segmentation", "segmentation_spleen", [], session_id=session_id))
        mask = read_mask(data, name, tmp_path)
        assert_same_grid(mask, phantom.image)
        assert dice(to_ijk(mask), to_ijk(phantom.label) == LABELS["spleen"]) > 0.8


def test_unknown_session_is_440_on_every_endpoint(server):
    for op, model, params in [
        ("segmentation", "segmentation_spleen", {}),
        ("dextr3d", "extreme_points", {"points": [[1, 1, 1]] * 6}),
        ("deepgrow", "deepgrow_3d", {"foreground": [[1, 1, 1]]}),
    ]:
        reply = post(server.url, op, model, [], params, session_id="no-such-session")
        assert reply.status_code == 440, reply.text
        assert reply.json()["error"]["type"] == "SessionExpired"
    assert requests.get(f"{server.url}/session/no-such-session", timeout=10).status_code == 404


def test_memory_cap_refuses_new_sessions_clearly(server, tmp_path):
    big = make_phantom(400_003, size=(256, 256, 200), spacing=(1.5, 1.5, 1.5))  # 25 MB decoded
    path, _ = write_phantom(big, tmp_path, stem="big")
    first = create(server.url, {"image": (path.name, path.read_bytes())})
    second = requests.put(f"{server.url}/session/", files={"image": (path.name, path.read_bytes())}, timeout=60)
    assert second.status_code == 503 and "Session storage is full" in second.json()["error"]["message"]
    assert requests.get(f"{server.url}/session/{first['session_id']}", timeout=10).status_code == 200
    assert sorted(p.name for p in (server.session_dir / "incoming").iterdir()) == []  # nothing left behind


def test_oversize_upload_is_413_and_server_carries_on(server):
    reply = requests.post(
        f"{server.url}/v1/segmentation",
        params={"model": "segmentation_spleen"},
        files={"datapoint": ("big.nii.gz", b"\0" * (MAX_UPLOAD_MB * 2**20 + 1))},
        timeout=60,
    )
    assert reply.status_code == 413 and f"at most {MAX_UPLOAD_MB} MB" in reply.json()["error"]["message"]
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200


def test_url_prefix_serves_the_same_routes(server):
    for path in ("/v1/models", "/aiaa/v1/models"):
        reply = requests.get(f"{server.url}{path}", params={"type": "deepgrow"}, timeout=10)
        assert reply.status_code == 200 and [m["name"] for m in reply.json()] == ["deepgrow_3d"]


def test_output_modes_and_writer_options(server, phantoms, tmp_path):
    phantom, path = phantoms[0]
    files = [("datapoint", (path.name, path.read_bytes()))]
    as_json = post(server.url, "segmentation", "segmentation_spleen", files, output="json")
    assert as_json.headers["Content-Type"] == "application/json" and "points" in as_json.json()
    bare = post(
        server.url,
        "segmentation",
        "segmentation_spleen",
        files,
        {"result_extension": ".nrrd", "result_dtype": "int16"},
        output="image",
    )
    assert bare.headers["Content-Type"] == "application/octet-stream"
    assert 'filename="result.nrrd"' in bare.headers["Content-Disposition"]
    mask = read_mask(bare.content, "bare.nrrd", tmp_path)
    assert_same_grid(mask, phantom.image)
    assert mask.GetPixelIDTypeAsString() == "16-bit signed integer"
    bad = post(server.url, "segmentation", "segmentation_spleen", files, output="pdf")
    assert bad.status_code == 400 and "output=image" in bad.json()["error"]["message"]


def test_zip_session_with_uncompress(server, phantoms, tmp_path):
    phantom, _ = phantoms[1]
    files = write_dicom_series(phantom.image, tmp_path / "dicom")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in files:
            z.write(f, f"study/{f.name}")
    created = create(server.url, {"image": (archive.name, archive.read_bytes())}, uncompress="true", save_as="x")
    assert created["session_info"]["size"] == list(phantom.image.GetSize())


def test_session_caches_stay_within_the_store_cap(tmp_path):
    """Cached pre-processing counts against the cap: a full store computes it for the request, keeps none."""
    store = SessionStore(tmp_path / "store", 60, 60, max_bytes=3 * 2**20)
    folder = tmp_path / "upload"
    folder.mkdir()
    session = store.create(sitk.Image([64, 64, 64], sitk.sitkUInt8), folder, "ct", None)  # 256 KB
    small = session.cached("small", lambda: torch.zeros(2**18, dtype=torch.uint8))
    assert "small" in session.cache and session.nbytes == 2**18 + 2**18
    big = session.cached("big", lambda: torch.zeros(4 * 2**20, dtype=torch.uint8))
    assert big.numel() == 4 * 2**20 and small.numel() == 2**18
    assert "big" not in session.cache and session.nbytes == 2 * 2**18
    assert store.used_bytes() <= store.max_bytes
