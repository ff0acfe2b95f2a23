"""Helpers the end-to-end tests share: posting to the AIAA API and checking replies and grids (and replies
built in process for clients tested without a server)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from requests_toolbelt.multipart.decoder import MultipartDecoder

Files = list[tuple[str, tuple[str, bytes]]]


def post(url: str, op: str, model: str, files: Files, params: dict | None = None, **query) -> requests.Response:
    data = {"params": json.dumps(params or {})}
    return requests.post(f"{url}/v1/{op}", params={"model": model, **query}, files=files, data=data, timeout=300)


def parse_result(reply: requests.Response) -> tuple[dict, str, bytes]:
    """Check the multipart shape the AIAA clients rely on; return params, file name and file bytes."""
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Length"] == str(len(reply.content))
    assert "chunked" not in reply.headers.get("Transfer-Encoding", "")
    parts = MultipartDecoder(reply.content, reply.headers["Content-Type"]).parts
    assert len(parts) == 2
    params_disp = parts[0].headers[b"Content-Disposition"].decode()
    file_disp = parts[1].headers[b"Content-Disposition"].decode()
    assert 'name="params"' in params_disp and "filename" not in params_disp
    assert "filename=" in file_disp
    filename = file_disp.split('filename="')[1].split('"')[0]
    return json.loads(parts[0].content), filename, parts[1].content


def http_reply(status: int, body: bytes = b"{}", content_type: str = "application/json") -> requests.Response:
    """A reply built in process, for a client given a scripted or fake `http` instead of a server."""
    response = requests.Response()
    response.status_code, response._content = status, body
    response.headers["Content-Type"] = content_type
    return response


def read_mask(data: bytes, filename: str, tmp_path: Path) -> sitk.Image:
    path = tmp_path / filename
    path.write_bytes(data)
    return sitk.ReadImage(str(path))


def assert_same_grid(mask: sitk.Image, reference: sitk.Image) -> None:
    assert mask.GetSize() == reference.GetSize()
    assert mask.GetSpacing() == pytest.approx(reference.GetSpacing(), abs=1e-6)
    assert mask.GetOrigin() == pytest.approx(reference.GetOrigin(), abs=1e-5)
    assert mask.GetDirection() == pytest.approx(reference.GetDirection(), abs=1e-6)


def to_ijk(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)
