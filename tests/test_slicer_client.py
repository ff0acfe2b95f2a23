"""The Slicer extension's HTTP client against scripted replies (no server): one re-upload after a 440, typed
errors, masks on another grid refused, superseded sessions deleted after the next answer, sheared volumes
refused before upload."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
from aiaa_helpers import http_reply as reply
from AIAASegmentLib import (
    AIAAError,
    BadInput,
    Client,
    GeometryMismatch,
    ServerBusy,
    ServerUnreachable,
    SessionExpired,
    Volume,
    write_nifti,
)
from image_fixtures import shear
from requests_toolbelt import MultipartEncoder


def error(status: int, message: str) -> requests.Response:
    return reply(status, f'{{"error": {{"type": "X", "message": "{message}"}}, "success": false}}'.encode())


def mask_reply(volume: Volume, params: dict) -> requests.Response:
    """The multipart a server sends: `params` without filename first, then the mask file."""
    mask = write_nifti(np.ones(volume.shape, np.uint8), volume.ijk_to_ras)
    body = MultipartEncoder({"params": (None, json.dumps(params), "application/json"),
                             "image": ("result.nii.gz", mask, "application/octet-stream")})
    return reply(200, body.to_string(), body.content_type)


class ScriptedHttp:
    """Answers requests in order from a script (an exception in it is raised); records (method, path, query)."""

    def __init__(self, *replies: requests.Response | Exception):
        self.replies, self.calls = list(replies), []

    def request(self, method, url, params=None, **kwargs):
        self.calls.append((method, url.split("//", 1)[1].split("/", 1)[1], params))
        answer = self.replies.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def small_volume():
    return Volume(np.zeros((4, 5, 6), np.int16), np.diag([-2.0, -2.0, 3.0, 1.0]))


def test_one_reupload_after_440_then_a_readable_error(small_volume):
    session = reply(200, b'{"session_id": "s1", "session_info": {}}')
    http = ScriptedHttp(session, error(440, "Session s1 expired"), reply(200, b'{"session_id": "s2"}'),
                        mask_reply(small_volume, {"label_names": {"spleen": 1}}))
    client = Client("http://aiaa:5000/prefix/", http=http)
    result = client.segment("spleen", small_volume)
    assert result.reuploaded and result.params == {"label_names": {"spleen": 1}}
    assert result.mask.shape == small_volume.shape and result.mask.dtype == np.uint8
    assert [c[:2] for c in http.calls] == [("PUT", "prefix/session/"), ("POST", "prefix/v1/segmentation"),
                                          ("PUT", "prefix/session/"), ("POST", "prefix/v1/segmentation")]
    assert http.calls[3][2] == {"model": "spleen", "session_id": "s2"}
    assert client.sessions.get(small_volume) == "s2"

    http.replies = [error(440, "gone"), reply(200, b'{"session_id": "s3"}'), error(440, "gone again")]
    with pytest.raises(SessionExpired, match="no longer holds the uploaded volume"):
        client.segment("spleen", small_volume)
    assert len(http.calls) == 7  # exactly one re-upload, no loop


@pytest.mark.parametrize(
    ("status", "kind", "text"),
    [(400, BadInput, "Point 2 is outside"), (503, ServerBusy, "busy"), (500, AIAAError, "HTTP 500")],
)
def test_http_errors_become_typed_errors(small_volume, status, kind, text):
    client = Client("http://aiaa", use_sessions=False, http=ScriptedHttp(error(status, "Point 2 is outside")))
    with pytest.raises(kind, match=text):
        client.deepgrow("dg", small_volume, [[1, 1, 1]], [])


def test_a_mask_on_another_grid_is_not_returned(small_volume):
    shifted = small_volume.ijk_to_ras.copy()
    shifted[0, 3] = 7.0  # the server answered on a grid moved by 7 mm
    http = ScriptedHttp(mask_reply(Volume(small_volume.voxels, shifted), {}))
    with pytest.raises(GeometryMismatch):
        Client("http://aiaa", use_sessions=False, http=http).segment("spleen", small_volume)


def test_non_multipart_reply_is_refused(small_volume):
    http = ScriptedHttp(reply(200, b"<html>proxy login</html>", "text/html"))
    with pytest.raises(AIAAError, match="instead of a mask"):
        Client("http://aiaa", use_sessions=False, http=http).segment("spleen", small_volume)


def session(session_id: str) -> requests.Response:
    return reply(200, f'{{"session_id": "{session_id}"}}'.encode())


@pytest.mark.parametrize(
    "delete_answer",
    [reply(200), error(404, "unknown"), error(440, "expired"), error(500, "bug"), requests.ConnectionError("down")],
)
def test_superseded_sessions_are_deleted_after_the_next_answer(small_volume, delete_answer):
    first = Volume(small_volume.voxels, small_volume.ijk_to_ras, source="node1")
    edited = Volume(small_volume.voxels + 1, small_volume.ijk_to_ras, source="node1")
    http = ScriptedHttp(session("s1"), mask_reply(first, {}), session("s2"), mask_reply(edited, {}), delete_answer,
                        mask_reply(edited, {}))
    client = Client("http://aiaa", http=http)
    client.segment("spleen", first)
    result = client.segment("spleen", edited)  # whatever the DELETE answers, the user's step succeeds
    assert result.mask.shape == edited.shape
    assert [c[:2] for c in http.calls[2:]] == [("PUT", "session/"), ("POST", "v1/segmentation"),
                                              ("DELETE", "session/s1")]
    client.segment("spleen", edited)
    assert http.calls[-1][:2] == ("POST", "v1/segmentation")  # deleted (or given up on) once


def test_delete_session_tolerates_a_session_already_gone_only():
    for status in (404, 440):
        Client("http://aiaa", http=ScriptedHttp(error(status, "gone"))).delete_session("s1")
    with pytest.raises(AIAAError, match="HTTP 500"):
        Client("http://aiaa", http=ScriptedHttp(error(500, "bug"))).delete_session("s1")
    with pytest.raises(ServerUnreachable):
        Client("http://aiaa", http=ScriptedHttp(requests.ConnectionError("down"))).delete_session("s1")


def test_superseded_sessions_wait_while_the_server_fails(small_volume):
    first = Volume(small_volume.voxels, small_volume.ijk_to_ras, source="node1")
    edited = Volume(small_volume.voxels + 1, small_volume.ijk_to_ras, source="node1")
    http = ScriptedHttp(session("s1"), mask_reply(first, {}), session("s2"), error(503, "loading"))
    client = Client("http://aiaa", http=http)
    client.segment("spleen", first)
    with pytest.raises(ServerBusy):
        client.segment("spleen", edited)
    http.replies = [mask_reply(edited, {}), reply(200)]
    client.segment("spleen", edited)
    assert [c[:2] for c in http.calls[-2:]] == [("POST", "v1/segmentation"), ("DELETE", "session/s1")]


@pytest.mark.parametrize("use_sessions", [True, False])
def test_a_sheared_volume_is_refused_before_upload(small_volume, use_sessions):
    http = ScriptedHttp()
    tilted = Volume(small_volume.voxels, shear(15) @ small_volume.ijk_to_ras)
    with pytest.raises(BadInput, match="sheared voxel grid"):
        Client("http://aiaa", use_sessions=use_sessions, http=http).segment("spleen", tilted)
    assert http.calls == []
