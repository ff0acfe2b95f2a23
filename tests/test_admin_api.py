"""The admin API against a live server: every upload form installs a model that serves masks on the input grid;
credentials; GET / PATCH / DELETE; name rules; concurrent uploads; the `aiaa models` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
import requests
from admin_helpers import (
    AUTH,
    PASSWORD,
    TOKEN,
    USER,
    archive_part,
    mask_reply,
    phantom_file,
    put_model,
    repo_state,
    segment,
    served,
    settled_versions,
    start_admin_server,
    two_parts,
    version_folders,
)
from conftest import REPO_ROOT, start_server, stop_server
from model_archives import (
    bundle_files,
    gzip_bytes,
    mmar_files,
    model_bytes,
    tar_bytes,
    tiny_unet,
    unet_network_section,
    v4_config,
    zip_bytes,
)

from server.registry import MARKER


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = start_admin_server(tmp_path_factory.mktemp("admin"))
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    return phantom_file(tmp_path_factory.mktemp("ct"))[0]


def state_dict_config(**kwargs) -> dict:
    return v4_config(network=unet_network_section(), **kwargs)


UPLOADS = {
    "mmar_zip": lambda: archive_part("clara_tiny.zip", zip_bytes(mmar_files(v4_config()))),
    "mmar_tgz": lambda: archive_part("clara_tiny.tgz", tar_bytes(mmar_files(v4_config()))),
    "mmar_tar": lambda: archive_part("clara_tiny.tar", tar_bytes(mmar_files(v4_config()), compression="")),
    "mmar_tar_gz_as_gz": lambda: archive_part("clara_tiny.gz", tar_bytes(mmar_files(v4_config()))),
    "folder_wrapped_zip": lambda: archive_part(
        "clara_tiny.zip", zip_bytes(mmar_files(state_dict_config(), kind="pt"), prefix="clara_pt_tiny_unet")
    ),
    "config_torchscript": lambda: two_parts(v4_config(), "model.ts", model_bytes(tiny_unet(), "ts")),
    "config_gzipped_torchscript": lambda: two_parts(
        v4_config(), "model.ts.gz", gzip_bytes(model_bytes(tiny_unet(), "ts"))
    ),
    "config_state_dict": lambda: two_parts(state_dict_config(), "model.pt", model_bytes(tiny_unet(), "pt")),
    "config_onnx": lambda: two_parts(v4_config(), "model.onnx", model_bytes(tiny_unet(), "onnx")),
    "bundle_zip": lambda: archive_part("spleen_bundle.zip", zip_bytes(bundle_files(("spleen",)))),
}
# Every upload runs on ONNX Runtime once its export matched the upload at install (issue 14: one fast path).
ENGINES = {"config_onnx": "onnxruntime", "config_state_dict": "onnxruntime", "config_torchscript": "onnxruntime"}


@pytest.mark.parametrize("form", list(UPLOADS))
def test_upload_serves_masks_on_the_input_grid(server, ct, tmp_path, form):
    name = f"up_{form}"
    reply = put_model(server.url, name, UPLOADS[form]())
    assert reply.status_code == 200, reply.text
    info = reply.json()
    assert info["name"] == name and info["type"] == "segmentation" and info["status"] == "ready"
    assert info["source"] == ("bundle" if form.startswith("bundle") else "mmar")
    assert info["labels"] == (["spleen"] if form.startswith("bundle") else ["organ"])
    if form in ENGINES:
        assert info["engine"] == ENGINES[form]
    assert served(server.url)[name] == info
    params, _ = segment(server.url, name, ct, tmp_path)
    assert params["label_names"] == {info["labels"][0]: 1}
    settled_versions(server.model_repo, name)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The app's click models exported as MMAR zips (v4 config + TorchScript) by `aiaa export`."""
    from lib.export import export_model

    out = tmp_path_factory.mktemp("exported")
    return {name: export_model(REPO_ROOT / "apps" / "spleen", name, "mmar", out) for name in CLICK_MODELS}


CLICK_MODELS = {"extreme_points": ("annotation", "dextr3d"), "deepgrow_3d": ("deepgrow", "deepgrow")}


@pytest.mark.parametrize("model", list(CLICK_MODELS))
def test_uploaded_click_models_pass_their_test_inference_and_answer_points(server, ct, exported, tmp_path, model):
    model_type, endpoint = CLICK_MODELS[model]
    archive = exported[model]
    reply = put_model(server.url, f"up_{model}", archive_part(archive.name, archive.read_bytes()))
    assert reply.status_code == 200, reply.text
    assert reply.json()["type"] == model_type and reply.json()["source"] == "mmar"
    box = [[20, 16, 12], [44, 40, 28]]  # an object's bounding box inside the 64x56x40 phantom
    mid = [(lo + hi) // 2 for lo, hi in zip(*box, strict=True)]
    if model_type == "annotation":
        points = [[box[e][0] if a == 0 else mid[0], box[e][1] if a == 1 else mid[1], box[e][2] if a == 2 else mid[2]]
                  for a in range(3) for e in (0, 1)]  # fmt: skip
        params = {"points": points}
    else:
        params = {"foreground": [mid], "background": []}
    with open(ct, "rb") as f:
        reply = requests.post(
            f"{server.url}/v1/{endpoint}",
            params={"model": f"up_{model}"},
            files={"datapoint": (ct.name, f.read())},
            data={"params": json.dumps(params)},
            timeout=300,
        )
    mask_reply(reply, ct, tmp_path)


def test_the_app_model_is_served_from_the_repository(server):
    assert served(server.url)["segmentation_spleen"]["source"] == "app"
    (folder,) = settled_versions(server.model_repo, "segmentation_spleen")
    assert (folder / "models" / "model.pt").read_bytes() == (
        REPO_ROOT / "apps" / "spleen" / "model" / "segmentation_spleen.pt"
    ).read_bytes()


@pytest.mark.parametrize("method", ["PUT", "GET", "PATCH", "DELETE"])
def test_admin_routes_need_credentials(server, method):
    before = served(server.url)
    for auth, headers, message in (
        (None, {}, "Admin credentials required"),
        ((USER, "wrong"), {}, "Wrong admin credentials"),
        (None, {"Authorization": "Bearer wrong"}, "Wrong admin credentials"),
    ):
        reply = requests.request(
            method,
            f"{server.url}/admin/model/segmentation_spleen",
            auth=auth,
            headers=headers,
            files=archive_part("m.zip", zip_bytes(mmar_files(v4_config()))) if method == "PUT" else None,
            timeout=60,
        )
        assert reply.status_code == 401, reply.text
        assert reply.headers["WWW-Authenticate"] == 'Basic realm="aiaa"'
        assert reply.json()["error"]["message"].startswith(message)
    assert served(server.url) == before


def test_bearer_token_works(server):
    reply = requests.get(
        f"{server.url}/admin/model/segmentation_spleen", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
    )
    assert reply.status_code == 200 and reply.json()["source"] == "app"


def test_public_bind_without_credentials_disables_the_admin_api(tmp_path):
    live = start_server(
        tmp_path,
        "--models",
        "segmentation_spleen",
        "--host",
        "0.0.0.0",
        env={"AIAA_ADMIN_USER": None, "AIAA_ADMIN_PASSWORD": None, "AIAA_ADMIN_TOKEN": None},
    )
    try:
        for auth in (None, ("admin", "admin")):
            reply = requests.delete(f"{live.url}/admin/model/segmentation_spleen", auth=auth, timeout=60)
            assert reply.status_code == 403 and "disabled" in reply.json()["error"]["message"]
        assert "segmentation_spleen" in served(live.url)
    finally:
        stop_server(live)


def test_get_returns_the_stored_config(server):
    config = v4_config(labels=("liver",), description="stored config")
    assert put_model(server.url, "stored", two_parts(config, "model.ts", model_bytes(tiny_unet(), "ts"))).ok
    reply = requests.get(f"{server.url}/admin/model/stored", auth=AUTH, timeout=60)
    assert reply.status_code == 200 and reply.json() == config


def test_patch_reloads_with_a_new_config_and_a_bad_one_changes_nothing(server, ct, tmp_path):
    config = v4_config(labels=("before",))
    assert put_model(server.url, "patched", two_parts(config, "model.ts", model_bytes(tiny_unet(), "ts"))).ok
    url = f"{server.url}/admin/model/patched"

    bad = {**config, "post_transforms": [{"name": "monai.transforms.NoSuchTransform", "args": {}}]}
    for body in (json.dumps(bad), "{not json", "[1, 2]"):
        reply = requests.patch(url, data=body, auth=AUTH, headers={"Content-Type": "application/json"}, timeout=60)
        assert reply.status_code == 400, reply.text
    assert "NoSuchTransform" in requests.patch(url, json=bad, auth=AUTH, timeout=60).json()["error"]["message"]
    assert served(server.url)["patched"]["labels"] == ["before"]
    assert requests.get(url, auth=AUTH, timeout=60).json() == config

    reply = requests.patch(url, json={**config, "labels": ["after"]}, auth=AUTH, timeout=60)
    assert reply.status_code == 200 and reply.json()["labels"] == ["after"]
    assert served(server.url)["patched"]["labels"] == ["after"]
    params, _ = segment(server.url, "patched", ct, tmp_path)
    assert params["label_names"] == {"after": 1}
    settled_versions(server.model_repo, "patched")


def test_a_bundle_config_can_be_read_and_patched(server):
    assert put_model(server.url, "bundle_cfg", archive_part("b.zip", zip_bytes(bundle_files(("spleen",))))).ok
    url = f"{server.url}/admin/model/bundle_cfg"
    config = requests.get(url, auth=AUTH, timeout=60).json()
    assert config["network_def"]["_target_"] == "UNet" and "preprocessing" in config
    config["inferer"]["overlap"] = 0.5
    reply = requests.patch(url, json=config, auth=AUTH, timeout=120)
    assert reply.status_code == 200 and reply.json()["labels"] == ["spleen"], reply.text
    assert requests.get(url, auth=AUTH, timeout=60).json()["inferer"]["overlap"] == 0.5
    settled_versions(server.model_repo, "bundle_cfg")


def test_delete(server):
    assert put_model(server.url, "doomed", two_parts(v4_config(), "model.ts", model_bytes(tiny_unet(), "ts"))).ok
    reply = requests.delete(f"{server.url}/admin/model/doomed", auth=AUTH, timeout=60)
    assert reply.status_code == 200 and reply.json() == {"success": True, "deleted": "doomed"}
    assert "doomed" not in served(server.url)
    settled_versions(server.model_repo, "doomed", count=0)
    reply = requests.delete(f"{server.url}/admin/model/doomed", auth=AUTH, timeout=60)
    assert reply.status_code == 404 and "doomed" in reply.json()["error"]["message"]
    assert requests.get(f"{server.url}/v1/models", params={"model": "doomed"}, timeout=60).status_code == 404


@pytest.mark.parametrize("name", [".hidden", "a" * 65, "two words", "x@1", "semi;colon", "ü"])
def test_bad_model_names(server, name):
    before = repo_state(server.model_repo)
    reply = put_model(server.url, name, archive_part("m.zip", zip_bytes(mmar_files(v4_config()))))
    assert reply.status_code == 400, reply.text
    assert "not a valid model name" in reply.json()["error"]["message"]
    assert repo_state(server.model_repo) == before


def test_concurrent_uploads_to_one_name_are_serialised(server):
    """Three slow uploads at once: never two of them installing (a new, unmarked version folder) together."""
    slow = {"spacing": (2.0, 2.0, 2.0), "roi": (16, 16, 16), "overlap": 0.5}  # a test inference of seconds
    uploads = {
        label: two_parts(v4_config(labels=(label,), **slow), "model.ts", model_bytes(tiny_unet(), "ts"))
        for label in ("first", "second", "third")
    }
    replies = {}

    def upload(label: str) -> None:
        replies[label] = put_model(server.url, "contested", uploads[label])

    threads = [threading.Thread(target=upload, args=(label,)) for label in uploads]
    for t in threads:
        t.start()
    installing = []
    while any(t.is_alive() for t in threads):  # watch the repository while they run
        folders = version_folders(server.model_repo, "contested")
        installing.append(sum(not (f / MARKER).exists() for f in folders))
        time.sleep(0.002)
    assert all(r.status_code == 200 for r in replies.values()), [r.text for r in replies.values()]
    assert max(installing) == 1  # seen installing, one at a time
    assert served(server.url)["contested"]["labels"][0] in replies
    settled_versions(server.model_repo, "contested")
    assert not any((server.model_repo / ".staging").iterdir())


def aiaa(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "models", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_cli_upload_list_show_delete(server, tmp_path):
    archive = tmp_path / "clara_cli.zip"
    archive.write_bytes(zip_bytes(mmar_files(v4_config(labels=("cli_organ",)))))
    config, weights = tmp_path / "config_aiaa.json", tmp_path / "model.onnx"
    config.write_text(json.dumps(v4_config(labels=("cli_onnx",))))
    weights.write_bytes(model_bytes(tiny_unet(), "onnx"))
    login = ["--server", server.url, "--user", USER, "--password", PASSWORD]

    done = aiaa("upload", "cli_model", str(archive), *login)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["labels"] == ["cli_organ"]
    assert "upload cli_model" in done.stderr and "100%" in done.stderr  # the progress bar
    done = aiaa("upload", "cli_onnx", str(weights), "--config", str(config), "--server", server.url, "--token", TOKEN)
    assert done.returncode == 0 and json.loads(done.stdout)["engine"] == "onnxruntime", done.stderr

    listing = aiaa("list", "--server", server.url)
    assert listing.returncode == 0
    rows = {line.split()[0]: line.split() for line in listing.stdout.splitlines()[1:]}
    assert rows["cli_model"][1:3] == ["segmentation", "mmar"] and rows["cli_onnx"][-1] == "cli_onnx"

    shown = aiaa("show", "cli_model", *login)
    assert shown.returncode == 0 and json.loads(shown.stdout)["config"]["labels"] == ["cli_organ"]

    env = {"PATH": "/usr/bin:/bin", "AIAA_ADMIN_USER": USER, "AIAA_ADMIN_PASSWORD": PASSWORD}
    assert aiaa("delete", "cli_model", "--server", server.url, env=env).returncode == 0
    assert "cli_model" not in served(server.url)

    failed = aiaa("delete", "cli_model", *login)
    assert failed.returncode == 1 and "error 404: Model 'cli_model' is not on this server" in failed.stderr
    failed = aiaa("upload", "cli_model", str(archive), "--server", server.url, "--user", USER, "--password", "nope")
    assert failed.returncode == 1 and "error 401: Wrong admin credentials." in failed.stderr
