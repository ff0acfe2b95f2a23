"""Scheduling: a click is answered while a full-volume segmentation is in progress, batch work pauses for
clicks, and a full queue answers 503 with Retry-After (JSON body) instead of waiting.

The end-to-end tests run the real app over real HTTP (waitress in this process, so the segmentation can be
held inside its network with an event: the click must come back while it is held)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import waitress
from aiaa_helpers import parse_result, post, read_mask, to_ijk
from conftest import REPO_ROOT
from monai.networks.nets import UNet

from aiaa_core.evaluation import centre_click
from aiaa_core.phantoms import LABELS, make_phantom, write_phantom
from lib.infers import SegmentationSpleen
from lib.networks import segmentation_network
from server.app import create_app
from server.errors import ServiceUnavailable
from server.registry import ModelRegistry, ServedModel, load_app_models
from server.scheduler import Lane, Scheduler, Work
from server.settings import Settings

WAIT_S = 60  # generous bound on events that should come at once


# ------------------------------------------------------------------------------------------ the lanes


def test_a_full_lane_refuses_with_retry_after():
    lane = Lane("interactive", workers=1, max_waiting=0)
    holding, release = threading.Event(), threading.Event()

    def hold():
        with lane.slot():
            holding.set()
            release.wait(WAIT_S)

    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(hold)
        assert holding.wait(WAIT_S)
        with pytest.raises(ServiceUnavailable) as refused:
            with lane.slot():
                pass
        release.set()
        held.result(WAIT_S)
    assert int(refused.value.headers["Retry-After"]) >= 1
    assert "busy" in refused.value.message
    with lane.slot() as queued:  # free again
        assert queued >= 0


def test_batch_work_pauses_while_a_click_runs():
    scheduler = Scheduler(max_pause_s=WAIT_S)
    click_running, click_done, batch_passed = threading.Event(), threading.Event(), threading.Event()

    def click():
        with scheduler.run("deepgrow"):
            click_running.set()
            click_done.wait(WAIT_S)

    def segmentation():
        with scheduler.run("segmentation") as slot:
            slot.pacing.checkpoint()  # what every engine forward of the request does first
            batch_passed.set()

    with ThreadPoolExecutor(2) as pool:
        pool.submit(click)
        assert click_running.wait(WAIT_S)
        batch = pool.submit(segmentation)
        deadline = time.monotonic() + WAIT_S
        while not scheduler.pauses and not batch_passed.is_set() and time.monotonic() < deadline:
            batch_passed.wait(0.01)  # observable state: the scheduler's pause counter
        assert scheduler.pauses == 1 and not batch_passed.is_set()
        click_done.set()
        batch.result(WAIT_S)
    assert batch_passed.is_set()


def test_lanes_by_model_type():
    scheduler = Scheduler()
    assert scheduler.lane_for("deepgrow") is scheduler.lane_for("annotation") is scheduler.interactive
    assert scheduler.lane_for("segmentation") is scheduler.batch
    assert scheduler.lane_for(Work.DECODE) is scheduler.interactive  # a session's decoding, awaited like a click


def test_a_slot_hands_out_its_lane_and_pacing():
    """The slot says which lane's memory share the request gets and how its forwards run (the scheduler's
    own thread share: two schedulers in one process do not share threads)."""
    scheduler, other = Scheduler(threads=4), Scheduler(threads=2)
    with scheduler.run("deepgrow") as click, scheduler.run("segmentation") as segmentation:
        assert not click.batch and segmentation.batch
        assert click.pacing.share is segmentation.pacing.share is scheduler.threads
        assert segmentation.pacing.checkpoint == scheduler.checkpoint  # batch work checks in
        click.pacing.checkpoint()  # interactive work never waits
        assert scheduler.pauses == 0
    assert (scheduler.threads.total, other.threads.total) == (4, 2)


# ----------------------------------------------------------------------------------- over real HTTP


ENTERED, RELEASE = threading.Event(), threading.Event()  # module-level: MONAI Label deep-copies networks


class HeldUNet(UNet):
    """The segmentation network, held at its first forward until the test lets it go."""

    def __init__(self):
        reference = segmentation_network()
        super().__init__(
            spatial_dims=3,
            in_channels=1,
            out_channels=2,
            channels=reference.channels,
            strides=reference.strides,
            num_res_units=reference.num_res_units,
            norm="instance",
        )

    def forward(self, x):
        ENTERED.set()
        RELEASE.wait(WAIT_S)
        return super().forward(x)


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """The real app's deepgrow model and a held segmentation model, one batch worker and no batch queue."""
    tmp = tmp_path_factory.mktemp("scheduling")
    app_dir = REPO_ROOT / "apps" / "spleen"
    weights = str(app_dir / "model" / "segmentation_spleen.pt")
    segmentation = SegmentationSpleen(path=weights, network=HeldUNet(), engine="torch")
    models = [ServedModel("segmentation_spleen", segmentation, "test"), *load_app_models(app_dir, "deepgrow_3d")]
    settings = Settings(
        model_repo=tmp / "repo",
        session_dir=tmp / "sessions",
        log_dir=tmp / "logs",
        batch_workers=1,
        batch_queue=0,
        warm_up=False,  # a warm-up would run into the held network
    )
    app = create_app(settings, ModelRegistry(settings.model_repo, models))
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=8)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.effective_port}", app
    RELEASE.set()
    server.close()
    thread.join(WAIT_S)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    phantom = make_phantom(500_020, size=(80, 72, 48), spacing=(3.5, 3.5, 4.0), orientation="LPS")
    path, _ = write_phantom(phantom, tmp_path_factory.mktemp("phantom"), stem="ct")
    return phantom, path


def test_click_answered_while_a_segmentation_is_held_and_overload_is_503(app_server, phantom, tmp_path):
    url, app = app_server
    image, path = phantom
    files = [("datapoint", (path.name, path.read_bytes()))]
    session = requests.put(f"{url}/session/", files=files, timeout=WAIT_S).json()["session_id"]
    truth = to_ijk(image.label) == LABELS["spleen"]

    with ThreadPoolExecutor(1) as pool:
        segmentation = pool.submit(post, url, "segmentation", "segmentation_spleen", [], {}, session_id=session)
        assert ENTERED.wait(WAIT_S)  # the segmentation holds the only batch worker, inside its network

        clicked = post(url, "deepgrow", "deepgrow_3d", [], {"foreground": [centre_click(truth)]}, session_id=session)
        params, filename, data = parse_result(clicked)  # answered while the segmentation is still held
        assert to_ijk(read_mask(data, filename, tmp_path)).any() and params["latencies"]["queue"] < WAIT_S
        assert not segmentation.done()

        refused = post(url, "segmentation", "segmentation_spleen", [], {}, session_id=session)
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["type"] == "ServiceUnavailable" and refused.json()["success"] is False

        RELEASE.set()
        assert segmentation.result(WAIT_S).status_code == 200
    assert app.extensions["aiaa.scheduler"].batch.running == 0


def test_session_decoding_runs_in_a_lane(app_server, phantom):
    """Decoding allocates the image, so it holds a worker slot (and its share of the memory budget)."""
    url, app = app_server
    scheduler = app.extensions["aiaa.scheduler"]
    kinds, run = [], scheduler.run
    scheduler.run = lambda kind: kinds.append(kind) or run(kind)
    try:
        _, path = phantom
        reply = requests.put(f"{url}/session/", files={"image": (path.name, path.read_bytes())}, timeout=WAIT_S)
    finally:
        del scheduler.run
    assert reply.status_code == 200, reply.text
    assert kinds == [Work.DECODE]
