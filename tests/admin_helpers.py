"""What the admin-API tests share: a live server with admin credentials and small limits, uploads, checks, and
hostile model archives (a valid MMAR plus what an attacker adds)."""

from __future__ import annotations

import io
import json
import secrets
import stat
import struct
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import requests
import SimpleITK as sitk
from aiaa_helpers import assert_same_grid, parse_result, read_mask, to_ijk
from conftest import LiveServer, start_server
from model_archives import mmar_files, v4_config, zip_bytes

from aiaa_core.phantoms import make_phantom, write_phantom

USER, PASSWORD, TOKEN = "admin", secrets.token_hex(12), secrets.token_hex(16)  # hex: never a leading "-" (argparse)
AUTH = (USER, PASSWORD)
ADMIN_ENV = {"AIAA_ADMIN_USER": USER, "AIAA_ADMIN_PASSWORD": PASSWORD, "AIAA_ADMIN_TOKEN": TOKEN}
MAX_UPLOAD_MB = 8  # room for an exported app model (about 5 MB)
ARCHIVE_MAX_MB = 64
ARCHIVE_MAX_FILES = 200
ARCHIVE_MAX_RATIO = 50
SERVER_ARGS = (
    "--models",
    "segmentation_spleen",
    "--max-upload-mb",
    str(MAX_UPLOAD_MB),
    "--archive-max-mb",
    str(ARCHIVE_MAX_MB),
    "--archive-max-files",
    str(ARCHIVE_MAX_FILES),
    "--archive-max-ratio",
    str(ARCHIVE_MAX_RATIO),
)


def start_admin_server(tmp: Path, *extra: str) -> LiveServer:
    return start_server(tmp, *SERVER_ARGS, *extra, env=ADMIN_ENV)


def start_server_with_admin_file(tmp: Path, admin: tuple[str, str], *extra: str) -> LiveServer:
    """A server whose admin credentials come from an `--admin-config` file (as an operator writes it)."""
    config = tmp / "admin.json"
    config.write_text(json.dumps({"user": admin[0], "password": admin[1]}))
    return start_server(tmp, *extra, "--admin-config", str(config))


def archive_part(filename: str, data: bytes) -> dict:
    return {"data": (filename, data, "application/octet-stream")}


def two_parts(config: dict | bytes, filename: str, data: bytes) -> dict:
    raw = config if isinstance(config, bytes) else json.dumps(config).encode()
    return {"config": ("config_aiaa.json", raw, "application/json"), "data": (filename, data)}


def put_model(url: str, name: str, files: dict, auth=AUTH, **kwargs) -> requests.Response:
    return requests.put(f"{url}/admin/model/{name}", files=files, auth=auth, timeout=300, **kwargs)


def served(url: str) -> dict[str, dict]:
    reply = requests.get(f"{url}/v1/models", timeout=30)
    assert reply.status_code == 200
    return {m["name"]: m for m in reply.json()}


def repo_state(repo: Path) -> set[str]:
    """Every path under the model repository (what an install or a refusal may change), but the (empty)
    work folders themselves."""
    return {str(p.relative_to(repo)) for p in repo.rglob("*")} - {".staging", ".trash"}


def version_folders(repo: Path, name: str) -> list[Path]:
    return sorted(p for p in repo.iterdir() if p.name.startswith(f"{name}@"))


def settled_versions(repo: Path, name: str, count: int = 1, timeout_s: float = 30) -> list[Path]:
    """The version folders of `name` once there are `count` of them: a replaced or deleted version's folder
    goes when nothing references it any more, which a reference cycle can delay until the next collection."""
    deadline = time.monotonic() + timeout_s
    while len(found := version_folders(repo, name)) != count:
        assert len(found) > count and time.monotonic() < deadline, f"versions of '{name}': {found}"
        time.sleep(0.05)
    return found


def phantom_file(folder: Path, size=(64, 56, 40)) -> tuple[Path, sitk.Image]:
    phantom = make_phantom(3, size=size, spacing=(3.0, 2.5, 3.5), orientation="LPS")
    image_path, _ = write_phantom(phantom, folder, stem="ct")
    return image_path, phantom.image


def segment(url: str, model: str, image_path: Path, tmp: Path, **query) -> tuple[dict, np.ndarray]:
    """Run a segmentation; check the mask comes back on the input grid; return the params and the mask."""
    with open(image_path, "rb") as f:
        reply = requests.post(
            f"{url}/v1/segmentation",
            params={"model": model, **query},
            files={"datapoint": (image_path.name, f.read())},
            data={"params": "{}"},
            timeout=300,
        )
    return mask_reply(reply, image_path, tmp)


def mask_reply(reply: requests.Response, image_path: Path, tmp: Path) -> tuple[dict, np.ndarray]:
    """A segmentation reply's params and binary mask, checked to lie on the grid of `image_path`."""
    params, filename, data = parse_result(reply)
    mask = read_mask(data, filename, tmp)
    assert_same_grid(mask, sitk.ReadImage(str(image_path)))
    values = to_ijk(mask)
    assert set(np.unique(values)) <= {0, 1}
    return params, values


# ------------------------------------------------------------------------ hostile archives (valid MMAR base)


def valid_mmar() -> dict:
    """A well-formed TorchScript MMAR's files: the base the hostile archives below add to."""
    return mmar_files(v4_config())


def zip_with(members: list[tuple[zipfile.ZipInfo | str, bytes]], base: dict | None = None) -> bytes:
    """A zip of `base` (a valid MMAR by default) plus `members`, written as given (raw ZipInfo attributes kept)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in (base if base is not None else valid_mmar()).items():
            archive.writestr(name, data)
        for info, data in members:
            archive.writestr(info, data)
    return buffer.getvalue()


def tar_with(members: list[tarfile.TarInfo], base: dict | None = None) -> bytes:
    """A .tar.gz of `base` (a valid MMAR by default) plus data-less `members` (links, devices)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in (base if base is not None else valid_mmar()).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in members:
            archive.addfile(info)
    return buffer.getvalue()


def tar_member(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    """A tar header of `kind` (a link, a device...) without data."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def zip_symlink() -> bytes:
    """A valid MMAR zip plus a member whose Unix mode says symbolic link (to /etc/passwd)."""
    info = zipfile.ZipInfo("models/extra.ts")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return zip_with([(info, b"/etc/passwd")])


def zip_bomb(mb: int) -> bytes:
    """A valid MMAR plus `mb` MB of zeros that deflate about 1000:1."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in valid_mmar().items():
            archive.writestr(name, data)
        with archive.open("models/padding.bin", "w", force_zip64=True) as padding:
            for _ in range(mb):
                padding.write(bytes(1024**2))
    return buffer.getvalue()


def tar_bomb(mb: int) -> bytes:
    """A .tar.gz whose one member is `mb` MB of zeros (gzip packs zeros about 1000:1)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("models/padding.bin")
        info.size = mb * 1024**2
        archive.addfile(info, io.BytesIO(bytes(info.size)))
    return buffer.getvalue()


def tar_declaring(size: int) -> bytes:
    """A plain tar whose header declares `size` bytes that are not there: headers lie."""
    info = tarfile.TarInfo("models/huge.bin")
    info.size = size
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    return header + bytes(1024) + bytes(10240)


def zip_lying_about_size() -> bytes:
    """A member whose headers declare 10 bytes but that inflates to 1 MB."""
    data = bytearray(zip_with([("models/liar.bin", bytes(1024**2))], base={}))
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, 10)
    struct.pack_into("<I", data, central + 24, 10)
    return bytes(data)


def corrupt_zip() -> bytes:
    """A valid MMAR zip with 64 bytes of its compressed weights zeroed: every header still intact."""
    data = bytearray(zip_bytes(valid_mmar()))
    offset = data.find(b"PK\x01\x02") - 2000  # inside the weights' compressed data, headers intact
    data[offset : offset + 64] = bytes(64)
    return bytes(data)
