"""Hostile and broken uploads against a live server: each gets a 4xx with a clear message, writes no file
outside the server's work folders, runs no code, and leaves the served models and the repository as they were."""

from __future__ import annotations

import io
import json
import tarfile
import uuid
from pathlib import Path

import pytest
import requests
import torch
from admin_helpers import (
    ARCHIVE_MAX_FILES,
    ARCHIVE_MAX_MB,
    AUTH,
    MAX_UPLOAD_MB,
    archive_part,
    corrupt_zip,
    put_model,
    repo_state,
    served,
    start_admin_server,
    tar_bomb,
    tar_declaring,
    tar_member,
    tar_with,
    two_parts,
    valid_mmar,
    zip_bomb,
    zip_lying_about_size,
    zip_symlink,
    zip_with,
)
from conftest import REPO_ROOT, stop_server
from model_archives import (
    changed_bundle,
    model_bytes,
    onnx_with,
    setstate_torchscript,
    tar_bytes,
    tiny_unet,
    unet_network_section,
    v4_config,
    zip_bytes,
)

EVIL = f"aiaa_evil_{uuid.uuid4().hex[:12]}"  # every file a hostile upload tries to create is named after this
SENTINEL = Path("/tmp") / f"{EVIL}_pickle_ran"


class Payload:
    """Unpickling this calls open(SENTINEL, "w"): the file exists afterwards if the server ran the pickle."""

    def __reduce__(self):
        return (open, (str(SENTINEL), "w"))


def evil_checkpoint() -> bytes:
    state = tiny_unet().state_dict()
    buffer = io.BytesIO()
    torch.save({**state, "payload": Payload()}, buffer)
    return buffer.getvalue()


def many_files() -> bytes:
    return zip_with([(f"docs/note_{i}.txt", b"x") for i in range(ARCHIVE_MAX_FILES + 1)])


def with_config(config) -> bytes:
    files = valid_mmar()
    files["config/config_aiaa.json"] = config if isinstance(config, bytes) else str(config).encode()
    return zip_bytes(files)


def unknown_transform(name: str) -> bytes:
    config = v4_config()
    config["pre_transforms"].insert(1, {"name": name, "args": {"keys": "image"}})
    return with_config(json.dumps(config).encode())


def mmar_with_evil_pickle() -> bytes:
    files = {
        "config/config_aiaa.json": json.dumps(v4_config(network=unet_network_section())).encode(),
        "models/model.pt": evil_checkpoint(),
    }
    return zip_bytes(files)


def with_step(where: str, step: dict) -> bytes:
    """An MMAR archive whose config has `step` as the second step of `where`."""
    config = v4_config()
    config[where].insert(1, step)
    return with_config(json.dumps(config).encode())


def loader_running(command: list[str]) -> dict:
    """MONAI's alias of LoadImaged, with a reader name MONAI resolves and calls with the extra args."""
    return {
        "name": "monai.transforms.LoadImageD",
        "args": {"keys": "image", "reader": "subprocess.call", "args": command},
    }


def bundle_archive(change) -> bytes:
    return zip_bytes(changed_bundle(change), prefix="bundle")


def preprocessing_step(index: int, step: dict):
    return lambda config: config["preprocessing"]["transforms"].insert(index, step)


def escaping(kind: str, zip_name: str, tar_name: str, phrase: str) -> dict:
    """`zip_<kind>` and `tar_<kind>` cases: a valid MMAR plus one member whose name leaves the archive."""
    return {
        f"zip_{kind}": (lambda: archive_part("m.zip", zip_with([(zip_name, b"pwned")])), 400, phrase),
        f"tar_{kind}": (lambda: archive_part("m.tgz", tar_bytes({**valid_mmar(), tar_name: b"pwned"})), 400, phrase),
    }


# name → (the request's files, status, a phrase the message must hold)
HOSTILE = {
    **escaping("slip", f"../../{EVIL}.txt", f"models/../../../{EVIL}.txt", "points outside the archive"),
    **escaping("absolute_path", f"/tmp/{EVIL}.txt", f"/tmp/{EVIL}.txt", "absolute path"),
    "zip_symlink": (lambda: archive_part("m.zip", zip_symlink()), 400, "is a symbolic link"),
    "tar_symlink": (
        lambda: archive_part("m.tgz", tar_with([tar_member("models/extra.ts", tarfile.SYMTYPE, "/etc/passwd")])),
        400,
        "is a symbolic link",
    ),
    "tar_hard_link": (
        lambda: archive_part("m.tgz", tar_with([tar_member("models/extra.ts", tarfile.LNKTYPE, "/etc/passwd")])),
        400,
        "is a hard link",
    ),
    "tar_device": (
        lambda: archive_part("m.tgz", tar_with([tar_member(f"models/{EVIL}", tarfile.CHRTYPE)])),
        400,
        "device",
    ),
    "zip_bomb": (lambda: archive_part("m.zip", zip_bomb(40)), 400, "compression bomb"),
    "tar_bomb": (lambda: archive_part("m.tgz", tar_bomb(200)), 400, "compression bomb"),
    "tar_declaring_10_gb": (
        lambda: archive_part("m.tar", tar_declaring(10 * 1024**3)),
        413,
        f"unpacks to more than {ARCHIVE_MAX_MB} MB",
    ),
    "zip_lying_about_sizes": (lambda: archive_part("m.zip", zip_lying_about_size()), 400, "damaged"),
    "too_many_files": (lambda: archive_part("m.zip", many_files()), 413, f"more than {ARCHIVE_MAX_FILES} files"),
    "corrupt_zip": (lambda: archive_part("m.zip", corrupt_zip()), 400, "damaged or truncated"),
    "truncated_zip": (lambda: archive_part("m.zip", zip_bytes(valid_mmar())[:20000]), 400, "damaged or truncated"),
    "empty_zip": (lambda: archive_part("m.zip", zip_bytes({})), 400, "is empty"),
    "empty_file": (lambda: archive_part("m.zip", b""), 400, "is empty"),
    "not_an_archive": (lambda: archive_part("notes.txt", b"hello " * 100), 400, "is not a .zip, .tar"),
    "no_config": (
        lambda: archive_part("m.zip", zip_bytes({"models/model.ts": model_bytes(tiny_unet(), "ts")})),
        400,
        "holds no model config",
    ),
    "no_weights": (
        lambda: archive_part("m.zip", zip_bytes({"config/config_aiaa.json": json.dumps(v4_config()).encode()})),
        400,
        "weights",
    ),
    "bad_json": (lambda: archive_part("m.zip", with_config(b'{"version": "4", "labels": [')), 400, "not valid JSON"),
    "bad_json_config_part": (
        lambda: two_parts(b"{not json", "model.ts", model_bytes(tiny_unet(), "ts")),
        400,
        "'config' part is not valid JSON",
    ),
    "unknown_transform": (
        lambda: archive_part("m.zip", unknown_transform("monai.transforms.NoSuchTransformd")),
        400,
        "NoSuchTransformd",
    ),
    "transform_outside_allow_list": (
        lambda: archive_part("m.zip", unknown_transform("os.system")),
        400,
        "os.system",
    ),
    "pickle_that_runs_code_in_mmar": (lambda: archive_part("m.zip", mmar_with_evil_pickle()), 400, "model.pt"),
    "pickle_that_runs_code_with_config": (
        lambda: two_parts(v4_config(network=unet_network_section()), "model.pt", evil_checkpoint()),
        400,
        "model.pt",
    ),
    "archive_with_config_part": (
        lambda: two_parts(v4_config(), "m.zip", zip_bytes(valid_mmar())),
        400,
        "must be a model file",
    ),
    "model_file_without_config": (
        lambda: archive_part("model.ts", model_bytes(tiny_unet(), "ts")),
        400,
        "without its config",
    ),
    "model_failing_its_test_inference": (
        lambda: two_parts(v4_config(), "model.ts", model_bytes(tiny_unet(in_channels=2), "ts")),
        400,
        "failed a test inference",
    ),
    "oversize": (
        lambda: archive_part("m.zip", bytes(MAX_UPLOAD_MB * 1024**2 + 1)),
        413,
        f"at most {MAX_UPLOAD_MB} MB",
    ),
    "no_data_part": (lambda: {"model": ("m.zip", zip_bytes(valid_mmar()))}, 400, "'data' file part"),
    # code execution: names, arguments, bundle expressions, weights (issue 12, point 3)
    "alias_loader_with_a_reader_that_runs_a_command": (
        lambda: archive_part("m.zip", with_step("pre_transforms", loader_running(["touch", f"/tmp/{EVIL}_reader"]))),
        400,
        "'subprocess.call' names a Python object",
    ),
    "loader_reader_builtins_eval": (
        lambda: archive_part(
            "m.zip", with_step("pre_transforms", {"name": "LoadImageDict", "args": {"keys": "image", "reader": "eval"}})
        ),
        400,
        "names a Python builtin",
    ),
    "alias_saver_writing_anywhere": (
        lambda: archive_part(
            "m.zip",
            with_step("post_transforms", {"name": "SaveImageD", "args": {"keys": "pred", "output_dir": EVIL}}),
        ),
        400,
        "writes files",
    ),
    "alias_lambda": (
        lambda: archive_part("m.zip", with_step("pre_transforms", {"name": "LambdaD", "args": {"keys": "image"}})),
        400,
        "MONAI's Lambdad",
    ),
    "bundle_target_os_system": (
        lambda: archive_part(
            "b.zip", bundle_archive(preprocessing_step(1, {"_target_": "os.system", "command": f"touch /tmp/{EVIL}"}))
        ),
        400,
        "_target_ 'os.system' is not allowed",
    ),
    "bundle_alias_loader_with_a_reader": (
        lambda: archive_part(
            "b.zip",
            bundle_archive(
                preprocessing_step(0, {"_target_": "LoadImageD", **loader_running(["touch", EVIL])["args"]})
            ),
        ),
        400,
        "'subprocess.call' names a Python object",
    ),
    "bundle_import_expression": (
        lambda: archive_part(
            "b.zip",
            bundle_archive(
                preprocessing_step(1, {"_target_": "EnsureTyped", "keys": f"$__import__('os').system('touch {EVIL}')"})
            ),
        ),
        400,
        "is not accepted",
    ),
    "bundle_macro_reading_a_file": (
        lambda: archive_part("b.zip", bundle_archive(lambda c: c["inferer"].__setitem__("roi_size", "%/etc/passwd#a"))),
        400,
        "macros",
    ),
    "torchscript_setstate_creating_a_file": (
        lambda: two_parts(v4_config(), "model.ts", setstate_torchscript(f"/tmp/{EVIL}_setstate")),
        400,
        "uses 'from_file'",
    ),
    "torchscript_setstate_in_an_archive": (
        lambda: archive_part(
            "m.zip", zip_bytes({**valid_mmar(), "models/model.ts": setstate_torchscript(f"/tmp/{EVIL}_setstate")})
        ),
        400,
        "TorchScript may only do tensor math",
    ),
    "onnx_custom_operator": (lambda: two_parts(v4_config(), "model.onnx", onnx_with("com.evil")), 400, "com.evil"),
    "onnx_weights_from_a_server_file": (
        lambda: two_parts(v4_config(), "model.onnx", onnx_with(external="/etc/passwd")),
        400,
        "external file",
    ),
    "archive_with_the_repository_marker": (
        lambda: archive_part("m.zip", zip_bytes({**valid_mmar(), ".aiaa-model.json": b'{"format": "app"}'})),
        400,
        "keeps for itself",
    ),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = start_admin_server(tmp_path_factory.mktemp("hostile"))
    yield live
    stop_server(live)


def evil_files(server_root: Path) -> list[Path]:
    """Whatever a hostile upload managed to create, wherever it could have landed."""
    found = [p for p in server_root.rglob(f"*{EVIL}*")]
    for folder in (Path("/tmp"), REPO_ROOT, REPO_ROOT.parent):
        found += [p for p in folder.glob(f"*{EVIL}*")]
    return found


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_upload_is_refused_and_changes_nothing(server, case):
    files, status, phrase = HOSTILE[case]
    models_before, repo_before = served(server.url), repo_state(server.model_repo)
    reply = put_model(server.url, "victim", files())
    assert reply.status_code == status, reply.text
    message = reply.json()["error"]["message"]
    assert phrase in message, message
    assert "Traceback" not in message and len(message.splitlines()) == 1
    assert served(server.url) == models_before
    assert repo_state(server.model_repo) == repo_before
    assert evil_files(server.model_repo.parent) == []
    assert not any(p.is_symlink() for p in server.model_repo.rglob("*"))


def test_custom_code_is_dropped_never_imported(server):
    marker = Path("/tmp") / f"{EVIL}_custom_imported"
    code = f"open({str(marker)!r}, 'w').close()\n".encode()
    files = {**valid_mmar(), "custom/__init__.py": code, "custom/transforms.py": code}
    reply = put_model(server.url, "with_custom", archive_part("m.zip", zip_bytes(files, prefix="mmar")))
    assert reply.status_code == 200, reply.text
    (folder,) = [p for p in server.model_repo.iterdir() if p.name.startswith("with_custom@")]
    assert (folder / "config" / "config_aiaa.json").is_file() and not (folder / "custom").exists()
    assert not marker.exists()


@pytest.mark.parametrize(
    "step",
    [
        loader_running(["touch", f"/tmp/{EVIL}_patched"]),
        {"name": "SaveImageDict", "args": {"keys": "image", "output_dir": EVIL}},
        {"name": "monai.transforms.RandLambdaD", "args": {"keys": "image"}},
    ],
)
def test_a_hostile_config_sent_by_patch_is_refused_and_the_model_kept(server, step):
    """PATCH reinstalls the model's files with a new config: the same checks, the old version keeps serving."""
    reply = put_model(server.url, "patched", archive_part("m.zip", zip_bytes(valid_mmar())))
    assert reply.status_code == 200, reply.text
    models_before, repo_before = served(server.url), repo_state(server.model_repo)
    config = v4_config()
    config["pre_transforms"].insert(1, step)
    url = f"{server.url}/admin/model/patched"
    reply = requests.patch(url, json=config, auth=AUTH, timeout=120)
    assert reply.status_code == 400, reply.text
    assert served(server.url) == models_before and repo_state(server.model_repo) == repo_before
    assert evil_files(server.model_repo.parent) == []
