"""MONAI Label's own client (`monailabel.client.MONAILabelClient`, unchanged) against a live server at
`<url>/monailabel`: every served model (the app's three, an uploaded MMAR and bundle) in `/info/`, masks on
the input grid for each model type from a datastore image, a session and an upload, sessions shared with
the AIAA API, the datastore (upload, labels from both APIs, listing), active learning, and the admin
credentials on every write."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from admin_helpers import ADMIN_ENV, AUTH, TOKEN, archive_part, put_model
from aiaa_helpers import assert_same_grid, to_ijk
from conftest import start_server, stop_server
from model_archives import bundle_files, mmar_files, v4_config, zip_bytes
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from aiaa_core.mask_geometry import dice, extreme_points
from aiaa_core.phantoms import make_phantom, write_phantom

APP_MODELS = ("segmentation_spleen", "deepgrow_3d", "extreme_points")
UPLOADS = {"clara_tiny": ("clara_tiny.zip", mmar_files), "bundle_tiny": ("bundle_tiny.zip", bundle_files)}
SPLEEN = 1


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monailabel")
    live = start_server(tmp, "--datastore", str(tmp / "datastore"), "--max-upload-mb", "16", env=ADMIN_ENV)
    live.datastore = tmp / "datastore"
    for name, (filename, files) in UPLOADS.items():
        archive = zip_bytes(files(v4_config()) if files is mmar_files else files())
        assert put_model(live.url, name, archive_part(filename, archive)).status_code == 200
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """Two small phantoms written to disk, with their spleen labels: (path, image, label array)."""
    folder = tmp_path_factory.mktemp("phantoms")
    cases = []
    for seed in (3, 4):
        phantom = make_phantom(seed, size=(64, 56, 40), spacing=(3.0, 2.5, 3.5), orientation="LPS")
        image_path, label_path = write_phantom(phantom, folder, stem=f"ct{seed}")
        cases.append((image_path, phantom.image, to_ijk(phantom.label) == SPLEEN, label_path))
    return cases


def client(server, tmp_path, admin: bool = True) -> MONAILabelClient:
    """A new client for each call, as MONAI Label's Slicer module makes them: with credentials set, a call
    with a body adds its Content-Length to the client's own headers, which its next GET would then send."""
    ml = MONAILabelClient(f"{server.url}/monailabel", tmpdir=str(tmp_path), client_id="test-client")
    if admin:
        ml.update_auth({"token_type": "Bearer", "access_token": TOKEN})
    return ml


def test_info_lists_every_served_model_as_monai_label_describes_them(server, tmp_path):
    info = client(server, tmp_path, admin=False).info()  # open, like /v1/models
    models = info["models"]
    assert set(APP_MODELS) | set(UPLOADS) <= set(models)
    assert models["segmentation_spleen"]["type"] == "segmentation"
    assert models["deepgrow_3d"]["type"] == "deepgrow"
    assert models["extreme_points"]["type"] == "annotation"
    assert models["clara_tiny"]["source"] == "mmar" and models["bundle_tiny"]["source"] == "bundle"
    for described in models.values():
        assert described["dimension"] == 3 and isinstance(described["labels"], dict) and described["description"]
    assert "spleen" in info["labels"]
    assert set(info["strategies"]) == {"random", "first"}
    assert "segmentation_spleen" in info["trainers"]
    assert info["datastore"]["total"] >= 0


def read_mask(path) -> sitk.Image:
    return sitk.ReadImage(str(path))


def test_infer_every_model_type_on_a_datastore_image_gives_masks_on_its_grid(server, phantoms, tmp_path):
    ml = client(server, tmp_path)
    image_path, image, spleen, _ = phantoms[0]
    assert ml.upload_image(str(image_path), image_id="case-a")["image"] == "case-a"
    centre = [int(v) for v in np.argwhere(spleen).mean(axis=0).round()]
    requests_by_model = {
        "segmentation_spleen": {},
        "deepgrow_3d": {"foreground": [centre], "background": []},
        "extreme_points": {"foreground": extreme_points(spleen)},
        "clara_tiny": {},
        "bundle_tiny": {},
    }
    for model, params in requests_by_model.items():
        mask_file, result = ml.infer(model, "case-a", params)
        mask = read_mask(mask_file)
        assert_same_grid(mask, image)
        if model in APP_MODELS:
            assert dice(to_ijk(mask) > 0, spleen) > 0.5, model
            assert result["label_names"] or model != "segmentation_spleen"


def test_infer_on_a_session_shared_with_the_aiaa_api(server, phantoms, tmp_path):
    ml = client(server, tmp_path, admin=False)  # sessions and inference are open, as on the AIAA side
    image_path, image, spleen, _ = phantoms[1]
    session = ml.create_session(str(image_path))
    session_id = session["session_id"]
    centre = [int(v) for v in np.argwhere(spleen).mean(axis=0).round()]
    mask_file, result = ml.infer("deepgrow_3d", "", {"foreground": [centre], "label": "spleen"}, session_id=session_id)
    assert_same_grid(read_mask(mask_file), image)
    assert result["label_names"] == {"spleen": 1}
    # the same session through the AIAA contract
    reply = requests.post(
        f"{server.url}/v1/deepgrow",
        params={"model": "deepgrow_3d", "session_id": session_id},
        data={"params": json.dumps({"foreground": [centre]})},
        timeout=120,
    )
    assert reply.status_code == 200
    assert ml.get_session(session_id)["size"] == list(image.GetSize())
    ml.remove_session(session_id)
    with pytest.raises(MONAILabelClientException):
        ml.get_session(session_id)


def test_infer_on_an_uploaded_file(server, phantoms, tmp_path):
    ml = client(server, tmp_path, admin=False)
    image_path, image, _, _ = phantoms[1]
    mask_file, _ = ml.infer("segmentation_spleen", "not-stored", {}, file=str(image_path))
    assert_same_grid(read_mask(mask_file), image)


def test_labels_from_both_apis_land_in_the_datastore_and_active_learning_offers_unlabelled(server, phantoms, tmp_path):
    def ml():
        return client(server, tmp_path)

    (path_a, _, _, label_a), (path_b, image_b, spleen_b, label_b) = phantoms
    ml().upload_image(str(path_a), image_id="al-a")
    ml().upload_image(str(path_b), image_id="al-b")
    first = ml().next_sample("first", {})
    assert first["id"] in {"al-a", "case-a"} and first["path"].endswith(".nii.gz") and "/" not in first["path"]
    saved = ml().save_label("al-a", str(label_a))
    assert saved["image"] == "al-a" and saved["label"] == "al-a"
    assert ml().next_sample("first", {})["id"] != "al-a"
    assert ml().next_sample("random", {})["id"] != "al-a"
    # the AIAA side: the label with its image (content id), admin only
    with open(path_b, "rb") as image_file, open(label_b, "rb") as label_file:
        files = {"datapoint": (path_b.name, image_file.read()), "label": (label_b.name, label_file.read())}
    assert requests.put(f"{server.url}/v1/label", files=files, timeout=60).status_code == 401
    reply = requests.put(f"{server.url}/v1/label", files=files, auth=AUTH, timeout=60)
    assert reply.status_code == 200, reply.text
    aiaa_id = reply.json()["image"]
    listing = ml().datastore()
    assert "final" in listing["objects"]["al-a"]["labels"]
    assert "final" in listing["objects"][aiaa_id]["labels"]
    stored = sitk.ReadImage(str(server.datastore / "labels" / "final" / f"{aiaa_id}.nii.gz"))
    assert_same_grid(stored, image_b)
    assert np.array_equal(to_ijk(stored) == SPLEEN, spleen_b)


def test_writes_need_the_admin_credentials_and_bad_input_is_a_precise_4xx(server, phantoms, tmp_path):
    anonymous = client(server, tmp_path, admin=False)
    image_path, _, _, label_path = phantoms[0]
    for call in (
        lambda: anonymous.upload_image(str(image_path), image_id="nope"),
        lambda: anonymous.save_label("case-a", str(label_path)),
        lambda: anonymous.train_start("segmentation_spleen", {}),
        lambda: anonymous.train_stop(),
        lambda: anonymous.datastore(),
    ):
        with pytest.raises(MONAILabelClientException) as caught:
            call()
        assert "401" in caught.value.msg
    base = f"{server.url}/monailabel"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    cases = [
        ("put", "/datastore/?image=../../etc", {"file": ("x.nii.gz", b"x")}, 400),
        ("put", "/datastore/label?image=case-a&tag=../x", {"label": ("l.nii.gz", b"x")}, 400),
        ("put", "/datastore/label?image=missing", {"label": ("l.nii.gz", b"x")}, 404),
        ("put", "/datastore/?image=junk", {"file": ("x.nii.gz", b"not an image")}, 400),
        ("post", "/infer/segmentation_spleen?image=missing", None, 404),
        ("post", "/infer/no_such_model?image=case-a", None, 404),
        ("post", "/infer/segmentation_spleen", None, 400),
        ("post", "/activelearning/epistemic", None, 404),
    ]
    for method, path, files, status in cases:
        reply = getattr(requests, method)(f"{base}{path}", files=files, headers=headers, timeout=60)
        assert reply.status_code == status, (path, reply.text)
        assert reply.json()["success"] is False
    far = {"params": json.dumps({"foreground": [[1000, 0, 0]]})}
    reply = requests.post(f"{base}/infer/deepgrow_3d?image=case-a", data=far, timeout=60)
    assert reply.status_code == 400 and "foreground" in reply.json()["error"]["message"]
    # a label off the image's grid
    other = make_phantom(5, size=(32, 32, 32))
    label_file = write_phantom(other, tmp_path, stem="off")[1]
    with open(label_file, "rb") as f:
        reply = requests.put(f"{base}/datastore/label?image=case-a", files={"label": ("l.nii.gz", f.read())},
                             headers=headers, timeout=60)  # fmt: skip
    assert reply.status_code == 400 and "grid" in reply.json()["error"]["message"]


def test_monai_label_login_gives_a_token_for_the_admin_operations(server, phantoms, tmp_path):
    anonymous = client(server, tmp_path, admin=False)
    assert anonymous.auth_enabled()
    with pytest.raises(MONAILabelClientException) as refused:
        anonymous.auth_token(AUTH[0], "not-the-password")
    assert "401" in refused.value.msg
    token = client(server, tmp_path, admin=False).auth_token(*AUTH)
    assert token["token_type"] == "bearer" and token["access_token"] not in (AUTH[1], TOKEN)

    def logged_in():
        ml = client(server, tmp_path, admin=False)
        ml.update_auth(token)
        return ml

    assert logged_in().auth_valid_token()
    image_path, _, _, label_path = phantoms[0]
    assert logged_in().upload_image(str(image_path), image_id="login-a")["image"] == "login-a"
    assert logged_in().save_label("login-a", str(label_path))["label"] == "login-a"
    forged = client(server, tmp_path, admin=False)
    forged.update_auth({"token_type": "Bearer", "access_token": "0" * 48})
    assert not forged.auth_valid_token()
    with pytest.raises(MONAILabelClientException):
        forged.save_label("login-a", str(label_path))


def test_the_api_follows_the_servers_url_prefix(tmp_path):
    """With `--url-prefix /aiaa` MONAI Label's clients take `http://host:port/aiaa/monailabel` as the address."""
    from server.app import create_app
    from server.auth import AdminCredentials
    from server.registry import ModelRegistry
    from server.settings import Settings

    settings = Settings(
        model_repo=tmp_path / "repo",
        log_dir=tmp_path / "logs",
        session_dir=tmp_path / "sessions",
        datastore_dir=tmp_path / "datastore",
        url_prefix="/aiaa",
        admin_credentials=AdminCredentials("admin", "prefix-test"),
        warm_up=False,
    )
    web = create_app(settings, registry=ModelRegistry(tmp_path / "repo", [])).test_client()
    for path in ("/aiaa/monailabel/info/", "/monailabel/info/"):
        reply = web.get(path)
        assert reply.status_code == 200 and reply.get_json()["models"] == {}, path
    assert web.get("/aiaa/monailabel/datastore/").get_json() == {"total": 0, "completed": 0, "label_tags": {}}
    assert web.get("/aiaa/v1/models").status_code == 200  # the AIAA contract beside it, unchanged
