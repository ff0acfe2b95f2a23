"""What the polygon endpoint tests share (test_polygons_endpoints.py, test_polygons_hostile.py): an app
without models in process, a small oblique-free volume grid, uploads and the multipart reply."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from requests_toolbelt.multipart.decoder import MultipartDecoder

from server.app import create_app
from server.registry import ModelRegistry
from server.settings import Settings

SIZE = (24, 16, 5)  # i, j, k
SPACING = (0.75, 1.5, 2.5)
ORIGIN = (-10.5, 20.25, 7.0)
DIRECTION = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    i, j = np.indices(shape)
    return (i - centre[0]) ** 2 + (j - centre[1]) ** 2 <= radius**2


SQUARE = [[[2.5, 2.5], [2.5, 6.5], [6.5, 6.5], [6.5, 2.5]]]


def drag(poly, offset, *, vertex: int = 0, neighbours: int = 0, **more) -> dict:
    """fixpolygon params: move vertex `vertex` of polygon 0 by `offset` ([d_row, d_column]) on a 2D slice,
    `neighbours` vertices on each side following; `more` adds or overrides (dimension, slice_index...)."""
    return {
        "poly": poly,
        "vertex_offset": list(offset),
        "dimension": 2,
        "polygon_index": 0,
        "vertex_index": vertex,
        "propagate_neighbor": neighbours,
        **more,
    }


GOOD_2D = drag(SQUARE, [1, 1], neighbours=1)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """A test client of an app with no models: the polygon endpoints need none."""
    tmp = tmp_path_factory.mktemp("polygons")
    app = create_app(Settings(model_repo=tmp / "repo", session_dir=tmp / "sessions"), ModelRegistry(tmp / "repo", []))
    yield app.test_client()
    app.extensions["aiaa.sessions"].stop()


def volume_bytes(array_ijk: np.ndarray, tmp_path: Path, name: str = "volume.nii.gz") -> bytes:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_ijk.T))
    if image.GetDimension() == 3:
        image.SetSpacing(SPACING)
        image.SetOrigin(ORIGIN)
        image.SetDirection(DIRECTION)
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path.read_bytes()


def post(client, op: str, params, data: bytes | None, name: str = "volume.nii.gz"):
    form = {"params": params if isinstance(params, str) else json.dumps(params)}
    if data is not None:
        form["datapoint"] = (io.BytesIO(data), name)
    return client.post(f"/v1/{op}", data=form, content_type="multipart/form-data")


def read_multipart(reply, tmp_path: Path) -> tuple[dict, str, sitk.Image]:
    """The params JSON (first part, no filename), the file part's name, and the decoded mask."""
    assert reply.status_code == 200, reply.get_data(as_text=True)
    assert reply.mimetype == "multipart/form-data"
    assert int(reply.headers["Content-Length"]) == len(reply.data)
    params_part, file_part = MultipartDecoder(reply.data, reply.headers["Content-Type"]).parts
    disposition = params_part.headers[b"Content-Disposition"].decode()
    assert 'name="params"' in disposition and "filename" not in disposition
    filename = file_part.headers[b"Content-Disposition"].decode().split('filename="')[1].rstrip('"')
    path = tmp_path / f"reply-{filename}"
    path.write_bytes(file_part.content)
    return json.loads(params_part.content), filename, sitk.ReadImage(str(path))
