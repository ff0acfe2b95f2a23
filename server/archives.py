"""Turn an uploaded model (an archive, or a config plus one model file) into a model folder, safely.

An upload is untrusted. Every member is checked before it is written: no absolute paths, no `..`, no
symbolic or hard links, no devices or FIFOs, at most N files and M bytes unpacked, no compression-ratio
bombs; bytes are counted again while extracting because headers can lie. Any violation refuses the whole
archive with a 4xx that names the member and the reason: a hostile archive is never "sanitised" and
installed. Tar members are extracted through `tarfile`'s "data" filter on top of these checks. Reading a
ZIP's members (`open_zip`, `copy_member`: bytes counted as they inflate) is shared with DICOM uploads
(`server.dicom_reading`), which skip rather than refuse odd members because they never use member names.

The result is one folder in canonical layout: MMAR (`config/config_aiaa.json`, `models/model.ts|pt|onnx`)
or MONAI bundle (`configs/...`, `models/...`). Nothing in it is ever imported; a `custom/` folder (MMAR
Python code) is dropped with a warning.

(About 400 lines on purpose: every check an uploaded archive passes is here, side by side.)
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from aiaa_core.vocabularies import ModelFormat

from .errors import ApiError, BadRequest, PayloadTooLarge
from .registry import MARKER, TOMBSTONE

logger = logging.getLogger(__name__)

MMAR_CONFIG = PurePosixPath("config/config_aiaa.json")
MODEL_FILE_NAMES = {"ts": "model.ts", "pt": "model.pt", "onnx": "model.onnx"}
MODEL_FILE_EXTENSIONS = {".ts": "ts", ".pt": "pt", ".pth": "pt", ".onnx": "onnx"}
ARCHIVE_EXTENSIONS = (".zip", ".tar", ".tgz", ".tar.gz", ".gz")
SKIPPED_MEMBERS = ("__MACOSX", ".DS_Store")  # what macOS adds to a zip; never part of a model
# The repository's own markers: an upload holding one could pass, after a crash, for a finished install.
RESERVED_NAMES = (MARKER, TOMBSTONE)
_CHUNK = 1024**2
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ArchiveLimits:
    """What an upload may unpack to; `ratio_floor_bytes`: contents up to this size may compress freely."""

    max_files: int = 10_000
    max_bytes: int = 8 * 1024**3
    max_ratio: float = 200.0
    ratio_floor_bytes: int = 16 * 1024**2


@dataclass(frozen=True)
class ModelFolder:
    path: Path
    format: ModelFormat  # MMAR or BUNDLE


class _Budget:
    """Counts files and bytes against the limits while an archive unpacks."""

    def __init__(self, archive: str, packed_bytes: int, limits: ArchiveLimits):
        self.archive, self.packed, self.limits = archive, max(packed_bytes, 1), limits
        self.files = 0
        self.bytes = 0

    def add_file(self, member: str) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise PayloadTooLarge(
                f"Refused '{self.archive}': it holds more than {self.limits.max_files} files "
                f"(at '{member}'); nothing was installed."
            )

    def add_bytes(self, member: str, count: int) -> None:
        self.bytes += count
        self.check(member, self.bytes)

    def check(self, member: str, total: int) -> None:
        """Refuse when `total` unpacked bytes (declared or counted) break the size or ratio limit."""
        if total > self.limits.max_bytes:
            raise PayloadTooLarge(
                f"Refused '{self.archive}': it unpacks to more than {self.limits.max_bytes / 1024**2:.0f} MB "
                f"(at '{member}'); nothing was installed."
            )
        if total > self.limits.ratio_floor_bytes and total > self.limits.max_ratio * self.packed:
            raise BadRequest(
                f"Refused '{self.archive}': member '{member}' inflates it beyond {self.limits.max_ratio:.0f} times "
                f"its packed size (a compression bomb); nothing was installed."
            )


def refuse(archive: str, member: str, reason: str) -> BadRequest:
    return BadRequest(f"Refused '{archive}': member '{member}' {reason}; nothing was installed.")


def damaged(archive: str, kind: str) -> BadRequest:
    return BadRequest(f"Could not read '{archive}' as a {kind} archive: the file is damaged or truncated.")


def member_path(archive: str, name: str) -> PurePosixPath | None:
    """The member's relative path, or None for entries to skip (macOS metadata, the root itself)."""
    if "\x00" in name or any(ord(c) < 32 for c in name):
        raise refuse(archive, name.encode("unicode_escape").decode(), "has control characters in its name")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or _DRIVE.match(unified):
        raise refuse(archive, name, "has an absolute path")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise refuse(archive, name, "points outside the archive ('..')")
    if not parts or parts[0] == "__MACOSX" or parts[-1] == ".DS_Store":
        return None
    if parts[-1] in RESERVED_NAMES:
        raise refuse(archive, name, "has a name the model repository keeps for itself")
    return PurePosixPath(*parts)


def file_kind(path: Path) -> str | None:
    """'zip', 'gzip' or 'tar' (also bzip2/xz-compressed) by content, not by name; else None."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if (len(head) >= 262 and head[257:262] == b"ustar") or tarfile.is_tarfile(path):
        return "tar"
    return None


def torch_zip_kind(path: Path) -> str | None:
    """'ts' for a TorchScript file, 'pt' for a `torch.save` file (both are zips), None for any other zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) != 1:
        return None
    top = tops.pop()
    if f"{top}/data.pkl" not in names or f"{top}/version" not in names:
        return None
    return "ts" if f"{top}/constants.pkl" in names or any(n.startswith(f"{top}/code/") for n in names) else "pt"


ENCRYPTED = "is password-protected"
UNSUPPORTED_METHOD = "uses a compression method this server cannot read"


def open_zip(path: Path, archive: str) -> zipfile.ZipFile:
    """`path` as a ZIP, or the 400 saying that `archive` (the client's name) is damaged."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise damaged(archive, "ZIP") from None


def copy_member(
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    dst: BinaryIO,
    archive: str,
    count: Callable[[int], None],
    refusal: Callable[[str], ApiError],
) -> None:
    """Stream one member into `dst`, passing each chunk's size to `count` before writing it.

    `count` raises at a limit: the sizes in a ZIP's headers can lie, so bytes are counted as they inflate.
    A damaged member is `damaged(archive)`; one that cannot be read here is `refusal(ENCRYPTED)` or
    `refusal(UNSUPPORTED_METHOD)`. Model installs and DICOM uploads (`server.dicom_reading`) share it.
    """
    try:
        with zf.open(info) as src:
            while chunk := src.read(_CHUNK):
                count(len(chunk))
                dst.write(chunk)
    except NotImplementedError:  # a RuntimeError too, so caught first
        raise refusal(UNSUPPORTED_METHOD) from None
    except RuntimeError:  # zipfile: "File ... is encrypted, password required"
        raise refusal(ENCRYPTED) from None
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError):
        raise damaged(archive, "ZIP") from None


def unpack_zip(path: Path, dest: Path, archive: str, limits: ArchiveLimits) -> None:
    zf = open_zip(path, archive)
    budget = _Budget(archive, path.stat().st_size, limits)
    with zf:
        infos = zf.infolist()
        declared = files = 0
        for info in infos:  # every check on the headers before anything is written
            budget.add_file(info.filename)
            rel = member_path(archive, info.filename)
            mode = info.external_attr >> 16
            if info.create_system == 3 and stat.S_ISLNK(mode):
                raise refuse(archive, info.filename, "is a symbolic link")
            if info.create_system == 3 and stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise refuse(archive, info.filename, "is a device, FIFO or socket, not a file")
            if info.flag_bits & 0x1:
                raise refuse(archive, info.filename, ENCRYPTED)
            if rel is None or info.is_dir():
                continue
            files += 1
            declared += info.file_size
            budget.check(info.filename, declared)  # the declared sizes alone may already be too much
        if files == 0:
            raise BadRequest(f"The archive '{archive}' is empty.")
        for info in infos:
            rel = member_path(archive, info.filename)
            if rel is None:
                continue
            target = dest.joinpath(*rel.parts)
            if info.is_dir():
                _mkdir(target, archive, info.filename)
                continue
            _mkdir(target.parent, archive, info.filename)
            count = functools.partial(budget.add_bytes, info.filename)
            with _create(target, archive, info.filename) as dst:
                copy_member(zf, info, dst, archive, count, functools.partial(refuse, archive, info.filename))


def unpack_tar(path: Path, dest: Path, archive: str, limits: ArchiveLimits, packed_bytes: int) -> None:
    """Check each member's header, then extract it with tarfile's "data" filter, counting what lands."""
    budget = _Budget(archive, packed_bytes, limits)
    files = 0
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:  # lazily: a bomb is refused at its header, before its data is read
                budget.add_file(member.name)
                rel = member_path(archive, member.name)
                if member.issym():
                    raise refuse(archive, member.name, "is a symbolic link")
                if member.islnk():
                    raise refuse(archive, member.name, "is a hard link")
                if member.isdev():
                    raise refuse(archive, member.name, "is a device or FIFO, not a file")
                if member.issparse():
                    raise refuse(archive, member.name, "is a sparse file")
                if not (member.isreg() or member.isdir()):
                    raise refuse(archive, member.name, "is not a regular file or folder")
                if rel is None:
                    continue
                if member.isreg():
                    files += 1
                    budget.add_bytes(member.name, member.size)  # the declared size, before extracting
                member.name = str(rel)
                try:
                    tar.extract(member, dest, filter="data")
                except tarfile.FilterError as exc:
                    raise refuse(archive, member.name, f"is refused by the extraction filter ({exc})") from None
                except OSError as exc:
                    raise refuse(archive, member.name, f"cannot be written ({exc.strerror})") from None
                written = dest.joinpath(*rel.parts)
                if member.isreg() and written.stat().st_size != member.size:
                    raise refuse(archive, member.name, "unpacked to a different size than its header declares")
    except (tarfile.ReadError, EOFError, zlib.error):
        raise damaged(archive, "tar") from None
    if files == 0:
        raise BadRequest(f"The archive '{archive}' is empty.")


def gunzip(path: Path, target: Path, archive: str, limits: ArchiveLimits) -> None:
    budget = _Budget(archive, path.stat().st_size, limits)
    try:
        with gzip.open(path, "rb") as src, open(target, "wb") as dst:
            while chunk := src.read(_CHUNK):
                budget.add_bytes(archive, len(chunk))
                dst.write(chunk)
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError):
        raise damaged(archive, "gzip") from None


def _mkdir(path: Path, archive: str, member: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        raise refuse(archive, member, "clashes with a file of the same name") from None


def _create(path: Path, archive: str, member: str):
    try:
        return open(path, "xb")
    except FileExistsError:
        raise refuse(archive, member, "appears twice") from None
    except OSError as exc:
        raise refuse(archive, member, f"cannot be written ({exc.strerror})") from None


def unpack(path: Path, dest: Path, archive: str, limits: ArchiveLimits) -> None:
    """Unpack a .zip, .tar, .tar.gz/.tgz or .gz (gzipped tar or gzipped zip) into `dest`."""
    kind = file_kind(path)
    if kind == "gzip":
        inner = path.with_name(path.name + ".gunzipped")
        gunzip(path, inner, archive, limits)
        kind = file_kind(inner)
        if kind == "tar":
            return unpack_tar(inner, dest, archive, limits, packed_bytes=path.stat().st_size)
        if kind == "zip":
            return unpack_zip(inner, dest, archive, limits)
        raise BadRequest(
            f"'{archive}' is a single gzipped file, not a model archive: send a model file together with its "
            "config (-F config=@config_aiaa.json -F data=@model.ts), or a .zip/.tar.gz of the model folder."
        )
    if kind == "zip":
        return unpack_zip(path, dest, archive, limits)
    if kind == "tar":
        return unpack_tar(path, dest, archive, limits, packed_bytes=path.stat().st_size)
    if path.stat().st_size == 0:
        raise BadRequest(f"The upload '{archive}' is empty.")
    raise BadRequest(f"'{archive}' is not a .zip, .tar, .tar.gz or .gz archive (nor a model file with a config).")


def model_root(unpacked: Path, archive: str) -> ModelFolder:
    """The folder holding the model: the archive root or its single top-level folder."""
    entries = sorted(unpacked.iterdir())
    if not entries:
        raise BadRequest(f"The archive '{archive}' is empty.")
    candidates = [unpacked]
    if len(entries) == 1 and entries[0].is_dir():
        candidates.append(entries[0])
    for root in candidates:
        if root.joinpath(*MMAR_CONFIG.parts).is_file():
            return ModelFolder(root, ModelFormat.MMAR)
        if (root / "configs").is_dir():
            return ModelFolder(root, ModelFormat.BUNDLE)
    shown = ", ".join(str(p.relative_to(unpacked)) for p in sorted(unpacked.rglob("*"))[:12])
    raise BadRequest(
        f"The archive '{archive}' holds no model config: expected {MMAR_CONFIG} (MMAR) or configs/inference.json "
        f"(MONAI bundle) at its root or inside one top folder; found: {shown}."
    )


def drop_custom_code(folder: Path, archive: str) -> None:
    custom = folder / "custom"
    if custom.exists():
        logger.warning("'%s': ignoring its custom/ folder (uploaded code is never imported)", archive)
        shutil.rmtree(custom)


def model_file_kind(path: Path, filename: str) -> str | None:
    """'ts', 'pt' or 'onnx' for a model file (by extension, else by content), None for anything else."""
    lower = filename.lower()
    for extension, kind in MODEL_FILE_EXTENSIONS.items():
        if lower.endswith(extension):
            return kind
    if lower.endswith(ARCHIVE_EXTENSIONS):
        return None
    return torch_zip_kind(path) if file_kind(path) == "zip" else None


def parse_config(raw: bytes, source: str) -> dict:
    """A config JSON object from bytes; anything else is a 400 naming `source`."""
    try:
        config = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise BadRequest(f"The {source} is not UTF-8 text.") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"The {source} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})."
        ) from None
    if not isinstance(config, dict):
        raise BadRequest(f"The {source} must be a JSON object.")
    return config


def prepare_model(data: Path, data_name: str, config: bytes | None, work: Path, limits: ArchiveLimits) -> ModelFolder:
    """Lay the uploaded parts out as one model folder under `work` (which must be empty and private).

    `data` + `config`: a model file (.ts, .pt, .onnx) and its config_aiaa.json → MMAR layout.
    `data` alone: an MMAR archive or a MONAI bundle archive → its model folder.
    """
    if config is not None:
        parse_config(config, "'config' part")
        if file_kind(data) == "gzip":  # a gzipped model file: model.ts.gz
            data_name = data_name[: -len(".gz")] if data_name.lower().endswith(".gz") else data_name
            inner = data.with_name(data.name + ".gunzipped")
            gunzip(data, inner, data_name, limits)
            data = inner
        if data.stat().st_size == 0:
            raise BadRequest(f"The model file '{data_name}' is empty.")
        kind = model_file_kind(data, data_name)
        if kind is None:
            raise BadRequest(
                f"With a 'config' part, 'data' must be a model file (.ts TorchScript, .pt checkpoint or .onnx); "
                f"'{data_name}' is none of these. Send an archive as 'data' alone."
            )
        folder = work / "model"
        (folder / "config").mkdir(parents=True)
        (folder / "models").mkdir()
        folder.joinpath(*MMAR_CONFIG.parts).write_bytes(config)
        shutil.move(data, folder / "models" / MODEL_FILE_NAMES[kind])
        return ModelFolder(folder, ModelFormat.MMAR)
    if model_file_kind(data, data_name) is not None:
        raise BadRequest(
            f"'{data_name}' is a model file without its config: add it as -F config=@config_aiaa.json "
            "(or upload the MMAR archive)."
        )
    unpacked = work / "unpacked"
    unpacked.mkdir()
    unpack(data, unpacked, data_name, limits)
    data.unlink()
    found = model_root(unpacked, data_name)
    drop_custom_code(found.path, data_name)
    folder = work / "model"
    found.path.rename(folder)
    return ModelFolder(folder, found.format)
