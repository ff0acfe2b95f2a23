"""Annotation → training through MONAI Label's own client against a live server: labels saved into the
datastore, `train_start` (a tiny run of the app's train task in its own process), `train_status` until it is
done, the new weights installed as a new version that the AIAA clients see in `/v1/models` and that serves
masks on the input grid, the rollback, `train_stop`; and the install gate's refusal when the Dice drops."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
import requests
from admin_helpers import ADMIN_ENV, AUTH, TOKEN, segment, served, version_folders
from conftest import REPO_ROOT, start_server, stop_server
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from aiaa_core.phantoms import make_phantom, write_phantom
from server.monailabel_api.training import JobStatus, TrainingJobs, checked_request, validation_share

MODEL = "segmentation_spleen"
TINY = {"max_epochs": 1, "steps_per_epoch": 1, "num_train_phantoms": 1, "num_val_phantoms": 1, "crop_size": 32}
TRAIN_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monailabel-train")
    live = start_server(tmp, "--models", MODEL, "--datastore", str(tmp / "datastore"), env=ADMIN_ENV)
    yield live
    stop_server(live)


def client(server, tmp_path) -> MONAILabelClient:
    """A new client per call (see tests/test_monailabel_api.py: the client keeps a body's headers)."""
    ml = MONAILabelClient(f"{server.url}/monailabel", tmpdir=str(tmp_path), client_id="trainer-test")
    ml.update_auth({"token_type": "Bearer", "access_token": TOKEN})
    return ml


def finished_status(server, tmp_path) -> dict:
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while client(server, tmp_path).train_status(check_if_running=True):
        assert time.monotonic() < deadline, "the training job did not finish in time"
        time.sleep(1)
    return client(server, tmp_path).train_status()


def test_labels_train_a_new_version_that_replaces_the_served_model(server, tmp_path):
    images = []
    for seed in (3, 4):
        phantom = make_phantom(seed, size=(64, 56, 40), spacing=(3.0, 2.5, 3.5), orientation="LPS")
        image_path, label_path = write_phantom(phantom, tmp_path, stem=f"case{seed}")
        images.append(image_path)
        client(server, tmp_path).upload_image(str(image_path), image_id=f"case{seed}")
        client(server, tmp_path).save_label(f"case{seed}", str(label_path))
    before = served(server.url)[MODEL]
    assert before["source"] == "app"
    started = client(server, tmp_path).train_start(MODEL, TINY)
    assert started["status"] == "RUNNING" and started["request"]["max_epochs"] == 1
    with pytest.raises(MONAILabelClientException) as busy:
        client(server, tmp_path).train_start(MODEL, TINY)
    assert "429" in busy.value.msg
    status = finished_status(server, tmp_path)
    assert status["status"] == "DONE", status["details"][-20:]
    result = status["result"]
    assert result["installed"] and result["dice_after"] >= result["dice_before"]
    assert any("validation Dice" in line for line in status["details"])
    assert str(server.model_repo.parent) not in json.dumps(status)  # no server paths in the open status
    dashboard = requests.get(f"{server.url}/v1/dashboard", params={"format": "json"}, auth=AUTH, timeout=30).json()
    assert dashboard["training"]["status"] == "DONE" and dashboard["training"]["installed"]
    assert dashboard["training"]["version"] == result["version"]
    after = served(server.url)[MODEL]  # the AIAA clients' list shows the trained version
    assert after["source"] == "app" and after["version"] == result["version"] != before["version"]
    assert "+trained." in after["version"]
    folder = version_folders(server.model_repo, MODEL)[-1]
    marker = json.loads((folder / ".aiaa-model.json").read_text())
    seeded = hashlib.sha256((REPO_ROOT / "apps" / "spleen" / "model" / f"{MODEL}.pt").read_bytes()).hexdigest()
    # after a restart the registry loads it again by the app's config and does not seed the app's weights over it
    assert marker["model"] == MODEL and marker["weights_sha256"] == seeded and marker["version"] == after["version"]
    info = client(server, tmp_path).info()
    assert info["train_stats"][MODEL]["installed"] and MODEL in info["trainers"]  # trainable again
    _, mask = segment(server.url, MODEL, images[0], tmp_path)  # the new version serves masks on the input grid
    assert mask.any()
    # rollback: the trained version goes, the weights it replaced serve again (as a new version)
    reply = requests.delete(f"{server.url}/monailabel/train/{MODEL}/version", auth=AUTH, timeout=300)
    assert reply.status_code == 200 and reply.json()["removed"] == folder.name
    assert served(server.url)[MODEL]["version"] == before["version"]
    again = requests.delete(f"{server.url}/monailabel/train/{MODEL}/version", auth=AUTH, timeout=60)
    assert again.status_code == 404


def test_train_stop_ends_the_job_and_installs_nothing(server, tmp_path):
    labelled = client(server, tmp_path).datastore()["objects"]
    if len([i for i, o in labelled.items() if "final" in o["labels"]]) < 2:
        pytest.fail("runs after the training test, which saved two labels")
    version = served(server.url)[MODEL]["version"]
    client(server, tmp_path).train_start(MODEL, {**TINY, "max_epochs": 50})
    stopped = client(server, tmp_path).train_stop()
    assert stopped["status"] == "STOPPED" and not stopped["result"]["installed"]
    assert served(server.url)[MODEL]["version"] == version
    assert not client(server, tmp_path).train_status(check_if_running=True)


def test_train_requests_are_bounded(server, tmp_path):
    base = f"{server.url}/monailabel/train"
    for body, status in (
        ({"max_epochs": 0}, 400),
        ({"max_epochs": 10**6}, 400),
        ({"crop_size": 30}, 400),
        ({"rm -rf": 1}, 400),
        ([1, 2], 400),
    ):
        reply = requests.post(f"{base}/{MODEL}", data=json.dumps(body), auth=AUTH, timeout=30)
        assert reply.status_code == status, (body, reply.text)
    assert requests.post(f"{base}/no_such_model", json={}, auth=AUTH, timeout=30).status_code == 404
    assert requests.post(f"{base}/{MODEL}", json=TINY, timeout=30).status_code == 401


def test_the_install_gate_refuses_weights_whose_dice_dropped(tmp_path):
    work = tmp_path / "job"
    work.mkdir()
    (work / "result.json").write_text(json.dumps({"model": MODEL, "dice_before": 0.8, "dice_after": 0.7,
                                                  "best_epoch": 1}))  # fmt: skip
    jobs = TrainingJobs(tmp_path / "training", settings=None)
    result, status = jobs._finish(0, work, registry=None)  # never reaches the registry
    assert status == JobStatus.DONE and not result["installed"] and result["reason"] == "validation Dice dropped"


def test_validation_keeps_a_fifth_and_at_least_one_labelled_image():
    for labelled, expected in ((2, 1), (3, 1), (5, 1), (10, 2), (23, 5)):
        assert int(labelled * validation_share(labelled)) == expected
    assert checked_request({"client_id": "x"})[0] == {"max_epochs": 2}
