"""The dashboard and /docs in a real browser: Debian's headless Chromium, driven by Playwright.

Logs in with HTTP Basic, loads the dashboard after scripted traffic, checks the numbers on the page
against that traffic and that both charts drew their series, and that the browser fetched nothing
but this server (no CDN). Screenshots go to test-output/ at the repository root.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from admin_helpers import start_server_with_admin_file
from conftest import REPO_ROOT, stop_server
from model_archives import installed_the_old_way, mmar_files, v4_config

from aiaa_core.phantoms import make_phantom, write_phantom

CHROMIUM = Path("/usr/bin/chromium")
OUTPUT = REPO_ROOT / "test-output"
ADMIN = ("dash-admin", "browser-test-password")
MODEL = "segmentation_spleen"
REFUSED = "old_hostile"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERIES_COLORS = {"chart-rate": (0x1F, 0x77, 0xB4), "chart-latency": (0x2C, 0xA0, 0x2C)}  # dashboard.js COLORS

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed at /usr/bin/chromium; `make test` installs it with apt-get "
    "when run as root (apt-get install -y chromium)",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Serves MODEL; one model an older server installed fails today's checks and is refused at start-up."""
    tmp = tmp_path_factory.mktemp("dashboard")
    (tmp / "model_repo").mkdir()
    hostile = v4_config()
    hostile["pre_transforms"][0] = {"name": "LoadImaged", "args": {"keys": "image", "reader": "os.system"}}
    installed_the_old_way(tmp / "model_repo", REFUSED, mmar_files(hostile))
    live = start_server_with_admin_file(tmp, ADMIN, "--models", MODEL)
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def traffic(server, tmp_path_factory) -> dict:
    """6 model listings (2 of them 404), 1 unknown route, 1 session, 1 segmentation on it."""
    url = server.url
    image_path, _ = write_phantom(
        make_phantom(700_001, size=(64, 56, 40), spacing=(4.0, 4.0, 5.0)), tmp_path_factory.mktemp("img")
    )
    replies = [requests.get(f"{url}/v1/models", timeout=30) for _ in range(3)]
    replies.append(requests.get(f"{url}/v1/models", params={"model": MODEL}, timeout=30))
    replies += [requests.get(f"{url}/v1/models", params={"model": "nope"}, timeout=30) for _ in range(2)]
    replies.append(requests.get(f"{url}/no/such/route", timeout=30))
    session = requests.put(f"{url}/session/", files={"image": (image_path.name, image_path.read_bytes())}, timeout=60)
    replies.append(session)
    segmentation = requests.post(
        f"{url}/v1/segmentation",
        params={"model": MODEL, "session_id": session.json()["session_id"], "output": "json"},
        data={"params": "{}"},
        timeout=300,
    )
    replies.append(segmentation)
    assert [r.status_code for r in replies] == [200, 200, 200, 200, 404, 404, 404, 200, 200]
    return {"session_id": session.json()["session_id"]}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"),  # a new empty --user-data-dir
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            http_credentials={"username": ADMIN[0], "password": ADMIN[1]},
            viewport={"width": 1400, "height": 1000},
        )
        yield context
        context.close()


def open_page(browser, url: str):
    """A new page that records every request; anything not sent to this server is aborted and recorded."""
    page = browser.new_page()
    page.fetched, page.foreign = [], []

    def route(r):
        if r.request.url.startswith(url):
            page.fetched.append(r.request.url)
            r.continue_()
        else:
            page.foreign.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    return page


def cell(page, row: str, column: str) -> str:
    return page.locator(f"{row} td.{column}").inner_text()


def series_pixels(page, chart_id: str) -> int:
    """Pixels of the chart's canvas in its first series' colour: the series line and points were drawn."""
    return page.evaluate(
        """([id, rgb]) => {
            const canvas = document.querySelector('#' + id + ' canvas');
            const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            let n = 0;
            for (let i = 0; i < pixels.length; i += 4) {
                if (pixels[i + 3] > 200 && Math.abs(pixels[i] - rgb[0]) < 12 && Math.abs(pixels[i + 1] - rgb[1]) < 12
                    && Math.abs(pixels[i + 2] - rgb[2]) < 12) n += 1;
            }
            return n;
        }""",
        [chart_id, list(SERIES_COLORS[chart_id])],
    )


def test_dashboard_in_chromium_shows_the_traffic_and_draws_its_charts(server, traffic, browser):
    page = open_page(browser, server.url)
    reply = page.goto(f"{server.url}/v1/dashboard")
    assert reply.status == 200
    page.wait_for_selector("body[data-rendered]")

    models = 'tr[data-method="GET"][data-endpoint="/v1/models"]'
    assert cell(page, models, "requests") == "6" and cell(page, models, "errors") == "2"
    assert cell(page, 'tr[data-method="PUT"][data-endpoint="/session/"]', "requests") == "1"
    segmentation = 'tr[data-method="POST"][data-endpoint="/v1/segmentation"]'
    assert cell(page, segmentation, "requests") == "1" and cell(page, segmentation, "errors") == "0"
    assert cell(page, 'tr[data-endpoint="unmatched"]', "requests") == "1"
    assert cell(page, '#by-status tr[data-status="404"]', "count") == "3"
    assert cell(page, f'#by-model tr[data-model="{MODEL}"]', "requests") == "2"
    # Chromium first asks without credentials and sends them on the 401 challenge, as for a person
    assert cell(page, '#by-status tr[data-status="401"]', "count") == "1"
    assert page.inner_text("#total-errors") == "4"
    assert page.inner_text("#session-count") == "1"
    assert page.locator(f'#sessions tr[data-session="{traffic["session_id"]}"]').count() == 1
    name, model_type, engine, state, *_ = page.locator(f'#models tr[data-model="{MODEL}"] td').all_inner_texts()
    assert (name, model_type, state) == (MODEL, "segmentation", "ready") and engine
    assert page.inner_text("#models-ready") == "1 / 1, 1 refused"
    assert page.is_visible("#refused-section")
    refused, reason = page.locator(f'#refused tr[data-model="{REFUSED}"] td').all_inner_texts()
    assert refused == REFUSED and "'os.system' names a Python object" in reason
    assert page.locator("#errors tbody tr").count() == 4
    assert "Model 'nope' is not on this server" in page.inner_text("#errors")

    # both charts exist, hold the traffic and drew their first series in its colour
    rate = page.evaluate("window.dashboardCharts['chart-rate'].data[1].reduce((a, b) => a + b, 0)")
    assert rate >= 9  # the scripted requests (plus the page's own, all in this minute or the last)
    latency_points = page.evaluate("window.dashboardCharts['chart-latency'].data[1].filter((v) => v !== null).length")
    assert latency_points >= 1
    assert series_pixels(page, "chart-rate") > 50 and series_pixels(page, "chart-latency") > 5

    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "dashboard.png"), full_page=True)
    assert page.foreign == []  # nothing from a CDN or anywhere else
    assert any("/static/vendor/uplot/uPlot.iife.min.js" in u for u in page.fetched)
    page.close()


def test_dashboard_refreshes_itself(server, traffic, browser):
    page = open_page(browser, server.url)
    page.goto(f"{server.url}/v1/dashboard")
    page.wait_for_selector("body[data-rendered]")
    before = int(cell(page, 'tr[data-method="GET"][data-endpoint="/v1/models"]', "requests"))
    requests.get(f"{server.url}/v1/models", timeout=30)
    # the page polls ?format=json every 5 s: wait (bounded) for the new request to appear without a reload
    page.wait_for_function(
        """(n) => {
            const td = document.querySelector('tr[data-method="GET"][data-endpoint="/v1/models"] td.requests');
            return td && Number(td.textContent) === n;
        }""",
        arg=before + 1,
        timeout=15_000,
    )
    assert int(page.evaluate("document.body.dataset.rendered")) >= 2
    page.close()


def test_docs_page_renders_every_operation_offline(server, browser):
    spec = requests.get(f"{server.url}/openapi.json", timeout=30).json()
    operations = sum(len(item) for item in spec["paths"].values())
    page = open_page(browser, server.url)
    page.goto(f"{server.url}/docs")
    page.wait_for_selector(".opblock")
    assert page.locator(".opblock").count() == operations
    assert page.locator(".opblock-summary-path", has_text="/v1/segmentation").count() == 1
    page.screenshot(path=str(OUTPUT / "docs.png"), full_page=False)
    assert page.foreign == []
    page.close()
