"""Replays, on the wire, what NVIDIA's AIAA Python client (`client_api.py`) does, so it works unchanged:

- requests over `http.client` with its own multipart encoder (a boundary containing `$`), HTTP/1.1 and 1.0;
- replies parsed by `cgi.FieldStorage` straight from the response's raw socket file (only works with a
  Content-Length body: chunk-size lines would end up inside the NIfTI);
- `dextr3d(pre_process=True)`: the client crops around the points with 20 mm padding, resamples the crop
  to 128³, sends it with the points scaled into it, and pastes the returned mask back itself.
"""

from __future__ import annotations

import http.client
import json
import socket
import warnings
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import SimpleITK as sitk

from aiaa_core.evaluation import dice, extreme_points
from aiaa_core.phantoms import LABELS, make_phantom, write_phantom

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import cgi  # what the reference client parses replies with (Python ≤ 3.12)

BOUNDARY = "----------lImIt_of_THE_fIle_eW_$"


def encode(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> bytes:
    """The reference client's multipart layout: CRLF lines, fields first, then files."""
    lines: list[bytes] = []
    for name, value in fields.items():
        lines += [
            f"--{BOUNDARY}".encode(),
            f'Content-Disposition: form-data; name="{name}"'.encode(),
            b"",
            value.encode(),
        ]
    for name, (filename, data) in files.items():
        lines += [
            f"--{BOUNDARY}".encode(),
            f'Content-Disposition: form-data; name="{name}"; filename="{filename}"'.encode(),
            b"Content-Type: application/octet-stream",
            b"",
            data,
        ]
    lines += [f"--{BOUNDARY}--".encode(), b""]
    return b"\r\n".join(lines)


def client_post(url: str, selector: str, params: dict, image: Path, http10: bool = False) -> tuple[dict, dict]:
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
    if http10:
        conn._http_vsn, conn._http_vsn_str = 10, "HTTP/1.0"
    body = encode({"params": json.dumps(params)}, {"datapoint": (str(image), image.read_bytes())})
    conn.request(
        "POST",
        selector,
        body,
        {"content-type": f"multipart/form-data; boundary={BOUNDARY}", "content-length": str(len(body))},
    )
    response = conn.getresponse()
    assert response.status == 200, response.read()[:300]
    assert response.getheader("Transfer-Encoding") is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        fs = cgi.FieldStorage(
            fp=response.fp, environ={"REQUEST_METHOD": "POST"}, headers=response.msg, keep_blank_values=True
        )
    form = {f.name: f.value for f in fs.list if not f.filename}
    files = {f.filename: f.value for f in fs.list if f.filename}
    conn.close()
    return form, files


def client_crop(image: sitk.Image, points: list[list[int]], pad_mm: float = 20.0, roi: int = 128):
    """The reference client's image_pre_process: padded box (in voxels, int-truncated), resample to roi³."""
    spacing, size = image.GetSpacing(), image.GetSize()
    pts = np.asarray(points, dtype=int)
    vx_pad = [int(pad_mm / s) for s in spacing]
    low = [max(min(int(p[i] - vx_pad[i]) for p in pts), 0) for i in range(3)]
    high = [min(max(int(p[i] + vx_pad[i]) for p in pts), size[i] - 1) for i in range(3)]
    cropped = image[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
    out_spacing = [s * n / roi for s, n in zip(cropped.GetSpacing(), cropped.GetSize(), strict=True)]
    resampled = sitk.Resample(
        cropped, [roi] * 3, sitk.Transform(), sitk.sitkLinear, cropped.GetOrigin(), out_spacing, cropped.GetDirection()
    )
    ratio = np.asarray([roi] * 3, float) / np.asarray(cropped.GetSize(), float)
    scaled = ((pts - np.asarray(low)) * ratio).astype(int).tolist()
    return resampled, scaled, [[lo, hi] for lo, hi in zip(low, high, strict=True)]


def client_paste(mask_crop: sitk.Image, crop, reference: sitk.Image) -> np.ndarray:
    """The reference client's image_post_processing: nearest resample to the crop size, paste into zeros."""
    crop_size = [hi - lo for lo, hi in crop]
    spacing = [s * n / c for s, n, c in zip(mask_crop.GetSpacing(), mask_crop.GetSize(), crop_size, strict=True)]
    resized = sitk.Resample(
        mask_crop,
        crop_size,
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        mask_crop.GetOrigin(),
        spacing,
        mask_crop.GetDirection(),
    )
    full = np.zeros(reference.GetSize(), np.uint8)
    (i0, i1), (j0, j1), (k0, k1) = crop
    full[i0:i1, j0:j1, k0:k1] = sitk.GetArrayFromImage(resized).transpose(2, 1, 0)
    return full


def phantom_case(tmp_path: Path):
    phantom = make_phantom(600_000, size=(112, 96, 64), spacing=(3.0, 3.0, 3.0), orientation="LPS")
    path, _ = write_phantom(phantom, tmp_path)
    truth = sitk.GetArrayFromImage(phantom.label).transpose(2, 1, 0) == LABELS["spleen"]
    return phantom, path, truth


def test_segmentation_over_http11_and_http10(live_server, tmp_path):
    phantom, path, truth = phantom_case(tmp_path)
    for http10 in (False, True):
        form, files = client_post(live_server.url, "/v1/segmentation?model=segmentation_spleen", {}, path, http10)
        assert "points" in json.loads(form["params"])
        ((name, data),) = files.items()
        out = tmp_path / name
        out.write_bytes(data)
        mask = sitk.ReadImage(str(out))
        assert mask.GetSize() == phantom.image.GetSize()
        assert dice(sitk.GetArrayFromImage(mask).transpose(2, 1, 0), truth) > 0.85


def test_dextr3d_with_client_side_pre_process(live_server, tmp_path):
    phantom, _, truth = phantom_case(tmp_path)
    crop_image, crop_points, crop = client_crop(phantom.image, extreme_points(truth))
    crop_path = tmp_path / "crop.nii.gz"
    sitk.WriteImage(crop_image, str(crop_path), True)
    form, files = client_post(
        live_server.url, "/v1/dextr3d?model=extreme_points", {"points": json.dumps(crop_points)}, crop_path
    )
    ((name, data),) = files.items()
    out = tmp_path / name
    out.write_bytes(data)
    mask = client_paste(sitk.ReadImage(str(out)), crop, phantom.image)
    assert dice(mask, truth) >= 0.85


def test_reply_bytes_have_the_exact_multipart_shape(live_server, tmp_path):
    """Read the raw reply off a socket: status line, Content-Length, params part, then file part."""
    _, path, _ = phantom_case(tmp_path)
    body = encode({"params": "{}"}, {"datapoint": (path.name, path.read_bytes())})
    parsed = urlparse(live_server.url)
    head = (
        f"POST /v1/segmentation?model=segmentation_spleen HTTP/1.0\r\nHost: {parsed.hostname}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection((parsed.hostname, parsed.port), timeout=120) as sock:
        sock.sendall(head.encode() + body)
        raw = b""
        while chunk := sock.recv(1 << 16):
            raw += chunk
    header_blob, payload = raw.split(b"\r\n\r\n", 1)
    headers = dict(line.split(": ", 1) for line in header_blob.decode().split("\r\n")[1:])
    assert header_blob.startswith(b"HTTP/1.0 200") or header_blob.startswith(b"HTTP/1.1 200")
    assert int(headers["Content-Length"]) == len(payload)
    assert "Transfer-Encoding" not in headers and "Content-Encoding" not in headers
    boundary = headers["Content-Type"].split("boundary=")[1].strip('"').encode()
    parts = payload.split(b"--" + boundary)
    assert parts[0] == b"" and parts[-1].strip() == b"--"
    first, second = parts[1], parts[2]
    assert b'name="params"' in first.split(b"\r\n\r\n")[0] and b"filename" not in first.split(b"\r\n\r\n")[0]
    assert b"application/json" in first.split(b"\r\n\r\n")[0]
    assert b'filename="result.nii.gz"' in second.split(b"\r\n\r\n")[0]
    assert second.split(b"\r\n\r\n", 1)[1][:2] == b"\x1f\x8b"  # the gzip magic of the .nii.gz, unmangled
