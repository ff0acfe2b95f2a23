"""The Slicer extension's core client against a real server process: auto-segmentation, extreme points and
deepgrow on a phantom placed under a parent transform (world clicks → IJK → mask on the right voxels),
one upload for many clicks, one re-upload after the server forgot the session, and superseded sessions
deleted on the server.

A test whose model the server does not serve yet (weights not trained) is skipped, saying so.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
from AIAASegmentLib import (  # noqa: E402
    Client,
    ModelNotFound,
    ServerUnreachable,
    SessionCache,
    Volume,
    ijk_to_world,
    label_names,
    segments_in_mask,
    validate_clicks,
    validate_extreme_points,
    world_to_ijk,
)
from conftest import free_port  # noqa: E402

from aiaa_core.evaluation import centre_click, dice, extreme_points, next_click  # noqa: E402
from aiaa_core.phantoms import LABELS, make_phantom  # noqa: E402
from aiaa_core.volumes import ras_affine, to_array  # noqa: E402

MIN_DICE = 0.8  # the app's own targets are higher; here a mask on wrong voxels would score near 0
MIN_INSIDE = 0.6  # share of a deepgrow mask inside the clicked structure


class CountingHttp(requests.Session):
    """Counts what went over the wire: session uploads and inference requests that carried the volume."""

    def __init__(self):
        super().__init__()
        self.session_uploads = 0
        self.file_posts = 0

    def request(self, method, url, *args, files=None, **kwargs):
        if method == "PUT" and "/session/" in url:
            self.session_uploads += 1
        if method == "POST" and files and "image" in files:
            self.file_posts += 1
        return super().request(method, url, *args, files=files, **kwargs)


@pytest.fixture(scope="module")
def case():
    """An oblique phantom under a rigid parent transform, as after a registration in Slicer."""
    phantom = make_phantom(300_007, size=(96, 84, 56), spacing=(3.5, 3.5, 3.5), orientation="oblique")
    parent = np.eye(4)
    angle = np.radians(20.0)
    parent[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    parent[:3, 3] = [35.0, -20.0, 15.0]
    volume = Volume(to_array(phantom.image), ras_affine(phantom.image), parent)
    truth = to_array(phantom.label) == LABELS["spleen"]
    return volume, truth


@pytest.fixture(scope="module")
def served(live_server) -> dict:
    return {m.name: m for m in Client(live_server.url).models()}


def need(served: dict, name: str):
    if name not in served:
        pytest.skip(f"the server does not serve '{name}' yet (no weights in apps/spleen/model/)")
    return served[name]


def clicked(voxels_ijk, volume: Volume) -> np.ndarray:
    """Where Slicer reports clicks on these voxels: world coordinates, slightly off the voxel centres."""
    jitter = np.array([0.3, -0.35, 0.25])
    return ijk_to_world(np.asarray(voxels_ijk, dtype=float) + jitter, volume.ijk_to_world)


def test_models_lists_each_type(live_server, served):
    assert served, "the server serves no model at all"
    client = Client(live_server.url)
    for model_type in {m.type for m in served.values()}:
        listed = client.models(model_type)
        assert listed and all(m.type == model_type for m in listed)
    assert client.models("no-such-type") == []


def test_unknown_model_and_unreachable_server_have_their_own_errors(live_server, case):
    volume, _ = case
    with pytest.raises(ModelNotFound, match="no_such_model"):
        Client(live_server.url, use_sessions=False).segment("no_such_model", volume)
    with pytest.raises(ServerUnreachable, match="Cannot reach"):
        Client(f"http://127.0.0.1:{free_port()}", timeout=5).models()


def test_auto_segmentation_names_segments_and_reuses_the_upload(live_server, served, case):
    model = need(served, "segmentation_spleen")
    volume, truth = case
    http = CountingHttp()
    client = Client(live_server.url, http=http)
    first = client.segment(model.name, volume)
    again = client.segment(model.name, volume)
    assert http.session_uploads == 1 and http.file_posts == 0
    assert dice(first.mask, truth) >= MIN_DICE
    np.testing.assert_array_equal(first.mask, again.mask)
    names = label_names(model.labels, first.params.get("label_names"))
    assert segments_in_mask(first.mask, names) == [(LABELS["spleen"], "spleen")]


def test_extreme_points_from_world_clicks(live_server, served, case):
    model = need(served, "extreme_points")
    volume, truth = case
    world = clicked(extreme_points(truth), volume)
    points = validate_extreme_points(world_to_ijk(world, volume.ijk_to_world), volume.shape)
    assert points == extreme_points(truth)
    result = Client(live_server.url, use_sessions=False).annotate_extreme_points(model.name, volume, points)
    assert set(np.unique(result.mask)) <= {0, 1}
    assert dice(result.mask, truth) >= MIN_DICE


def on_target(mask, truth, clicked_voxel) -> bool:
    """The mask covers the clicked voxel and lies mostly inside the structure: right voxels, whatever the
    model's accuracy (its Dice targets are tested in test_models_accuracy.py)."""
    inside = np.logical_and(mask > 0, truth).sum() / max(int(np.count_nonzero(mask)), 1)
    return bool(mask[tuple(clicked_voxel)]) and inside >= MIN_INSIDE


def test_deepgrow_clicks_use_one_upload(live_server, served, case):
    model = need(served, "deepgrow_3d")
    volume, truth = case
    http = CountingHttp()
    client = Client(live_server.url, http=http)
    clicks = {"foreground": [centre_click(truth)], "background": []}
    for _ in range(3):
        world = {kind: clicked(points, volume) for kind, points in clicks.items() if points}
        foreground, background = validate_clicks(
            world_to_ijk(world["foreground"], volume.ijk_to_world),
            world_to_ijk(world.get("background", np.empty((0, 3))), volume.ijk_to_world),
            volume.shape,
        )
        assert (foreground, background) == (clicks["foreground"], clicks["background"])
        result = client.deepgrow(model.name, volume, foreground, background)
        assert on_target(result.mask, truth, foreground[0])
        kind, point = next_click(result.mask, truth)
        clicks[kind].append(point)
    assert http.session_uploads == 1 and http.file_posts == 0


def test_session_forgotten_by_the_server_is_uploaded_again_once(live_server, served, case):
    model = need(served, "deepgrow_3d")
    volume, truth = case
    http = CountingHttp()
    client = Client(live_server.url, http=http)
    click = [centre_click(truth)]
    first = client.deepgrow(model.name, volume, click, [])
    assert not first.reuploaded and on_target(first.mask, truth, click[0])
    old_session = client.sessions.get(volume)
    assert requests.delete(f"{live_server.url}/session/{old_session}", timeout=30).status_code == 200

    recovered = client.deepgrow(model.name, volume, click, [])
    assert recovered.reuploaded and http.session_uploads == 2
    assert client.sessions.get(volume) not in (None, old_session)
    np.testing.assert_array_equal(recovered.mask, first.mask)  # the same image is on the server again
    assert not client.deepgrow(model.name, volume, click, []).reuploaded and http.session_uploads == 2
    client.delete_session(client.sessions.get(volume))
    client.delete_session(client.sessions.get(volume))  # already gone: not an error


def test_without_sessions_each_request_carries_the_volume(live_server, served, case):
    model = need(served, "segmentation_spleen")
    volume, truth = case
    http = CountingHttp()
    client = Client(live_server.url, use_sessions=False, compress=False, http=http)
    for _ in range(2):
        assert dice(client.segment(model.name, volume).mask, truth) >= MIN_DICE
    assert (http.session_uploads, http.file_posts) == (0, 2)


def test_superseded_sessions_are_deleted_on_the_server(live_server, served, case):
    model = need(served, "deepgrow_3d")
    volume, truth = case
    click = [centre_click(truth)]

    def export(change: int, source: str) -> Volume:
        """The volume as Slicer exports node `source` after a voxel edit of `change`."""
        voxels = volume.voxels.copy()
        voxels[0, 0, 0] += change
        return Volume(voxels, volume.ijk_to_ras, volume.parent_to_world, source=source)

    def gone(session_id: str) -> bool:
        held = requests.get(f"{live_server.url}/session/{session_id}", timeout=30).status_code
        inferred = requests.post(f"{live_server.url}/v1/deepgrow", params={"model": model.name,
                                 "session_id": session_id}, files={"params": (None, json.dumps(
                                     {"foreground": click, "background": []}))}, timeout=60).status_code
        return (held, inferred) == (404, 440)

    client = Client(live_server.url, sessions=SessionCache(capacity=2))
    client.deepgrow(model.name, export(0, "node1"), click, [])
    before_edit = client.sessions.session_ids()[0]
    assert not gone(before_edit)
    client.deepgrow(model.name, export(1, "node1"), click, [])  # the user edited a voxel of node1
    after_edit = client.sessions.session_ids()[0]
    assert gone(before_edit) and not gone(after_edit)

    for change, source in ((2, "node2"), (3, "node3")):  # two other volumes push node1's out of a 2-entry list
        assert on_target(client.deepgrow(model.name, export(change, source), click, []).mask, truth, click[0])
    assert gone(after_edit) and len(client.sessions.session_ids()) == 2
    assert not any(gone(session_id) for session_id in client.sessions.session_ids())
