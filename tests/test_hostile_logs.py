"""Log leaks (issue 12): after real uploads and inferences, neither the log file nor `/logs` holds the admin
password, a session id, an uploaded file's name, click points or a library's request dump; `/logs` needs
the admin credentials; one record cannot push the history out of the rotated files."""

from __future__ import annotations

import json
import logging
import re
import uuid

import numpy as np
import pytest
import requests
from aiaa_helpers import parse_result, post, to_ijk
from conftest import generated_admin, start_server, stop_server

from aiaa_core.phantoms import LABELS, make_phantom, write_phantom
from server import logs
from server.auth import AdminCredentials, effective_credentials

PATIENT = "DOE_JANE_19570101"  # uploads named like a patient: the name must reach no log
RECORD_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<name>[\w.]+): ")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server without configured credentials (it makes up a one-time password), with uploads and clicks
    behind it: a session made and clicked twice, then deleted, and a one-shot upload."""
    tmp = tmp_path_factory.mktemp("hostile-logs")
    live = start_server(
        tmp,
        "--models",
        "deepgrow_3d",
        env={"AIAA_ADMIN_USER": None, "AIAA_ADMIN_PASSWORD": None, "AIAA_ADMIN_TOKEN": None},
    )
    phantom = make_phantom(12_001, size=(64, 56, 40), spacing=(4.0, 4.0, 5.0))
    image, _ = write_phantom(phantom, tmp, stem=PATIENT)
    truth = to_ijk(phantom.label) == LABELS["spleen"]
    point = [int(v) for v in np.argwhere(truth).mean(axis=0).round()]
    clicks = {"foreground": [point], "background": []}
    reply = requests.put(f"{live.url}/session/", files={"image": (image.name, image.read_bytes())}, timeout=120)
    assert reply.status_code == 200, reply.text
    session_id = reply.json()["session_id"]
    for _ in range(2):
        parse_result(post(live.url, "deepgrow", "deepgrow_3d", [], clicks, session_id=session_id))
    parse_result(post(live.url, "deepgrow", "deepgrow_3d", [("datapoint", (image.name, image.read_bytes()))], clicks))
    assert requests.delete(f"{live.url}/session/{session_id}", timeout=30).status_code == 200
    live.session_id, live.point = session_id, point
    yield live
    stop_server(live)


def stored_log(server) -> str:
    return "".join(p.read_text(encoding="utf-8") for p in sorted(server.log_dir.glob(logs.LOG_FILE + "*")))


def test_generated_password_only_on_the_console(server):
    user, password = generated_admin(server)  # printed on stderr
    text = stored_log(server)
    served = requests.get(f"{server.url}/logs", params={"lines": 10_000}, auth=(user, password), timeout=30)
    assert served.status_code == 200 and "aiaa.requests" in served.text
    for log in (text, served.text):
        assert password not in log
        assert "one-time admin password for this run is on the console" in log  # said, not shown


def test_no_session_id_file_name_or_request_dump(server):
    text = stored_log(server)
    assert "method=POST path=/v1/deepgrow model=deepgrow_3d session=sid-" in text  # the inferences happened
    assert server.session_id not in text and not re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-", text)
    assert PATIENT not in text and "foreground" not in text and json.dumps(server.point) not in text
    for line in text.splitlines():
        record = RECORD_RE.match(line)
        if record and record["level"] in ("DEBUG", "INFO"):  # MONAI Label logs the request dict at INFO
            assert record["name"].split(".")[0] in logs.OWN_LOGGERS, line


def test_logs_refuse_anonymous_clients(server):
    for auth in (None, ("admin", "admin"), (generated_admin(server)[0], "guess")):
        reply = requests.get(f"{server.url}/logs", auth=auth, timeout=30)
        assert reply.status_code == 401 and "aiaa.requests" not in reply.text


def test_a_secret_sent_by_a_client_is_not_logged(server):
    _, password = generated_admin(server)
    assert requests.get(f"{server.url}/v1/models", params={"model": password}, timeout=30).status_code == 404
    assert "model=*** " in stored_log(server) and password not in stored_log(server)


# --- the filter and formatter themselves, on this process's root logger -------------------------------


@pytest.fixture
def configured(tmp_path):
    """`configure_logging` into tmp_path; the root logger and the libraries' levels restored after."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), {n: logging.getLogger(n).level for n in ("monai", "monailabel")})
    path = logs.configure_logging(tmp_path)
    yield path
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(saved[0])
    for handler in saved[1]:
        root.addHandler(handler)
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


def test_library_info_dropped_even_when_the_library_resets_its_level(configured):
    chatty = logging.getLogger("monailabel.tasks.infer.basic_infer")
    chatty.setLevel(logging.INFO)  # what MONAI Label does on every inference
    chatty.info("Infer Request: {'image': '/tmp/%s.nii', 'foreground': [[1, 2, 3]]}", PATIENT)
    logging.getLogger("monai.transforms").info("tensor([[0.1, 0.2]])")
    logging.getLogger("monailabel.tasks").warning("a warning still shows")
    logging.getLogger("server.sessions").info("own info shows")
    text = configured.read_text(encoding="utf-8")
    assert PATIENT not in text and "tensor(" not in text
    assert "a warning still shows" in text and "own info shows" in text


def test_records_are_redacted_capped_and_cannot_forge_lines(configured):
    session_id = str(uuid.uuid4())
    log = logging.getLogger("server.test")
    log.info("session %s created; path /sessions/%s/image.nii", session_id, session_id.upper())
    log.info("x" * 1_000_000)
    log.info("a\n2026-01-01 00:00:00,000 INFO aiaa.requests: forged")
    try:
        raise ValueError("y" * 100_000)
    except ValueError:
        log.exception("failed")
    lines = configured.read_text(encoding="utf-8").splitlines()
    tag = logs.session_tag(session_id)
    assert lines[0].count(tag) == 2 and session_id not in lines[0] and session_id.upper() not in lines[0]
    assert len(lines[1]) < logs.RECORD_LIMIT + 100 and "characters cut" in lines[1]
    assert not any(line.startswith("2026-01-01") for line in lines)
    traceback = lines[next(i for i, line in enumerate(lines) if line.endswith("server.test: failed")) :]
    assert sum(len(line) + 1 for line in traceback) < logs.TRACEBACK_LIMIT + 500
    assert "Traceback" in traceback[1] and "ValueError: yyy" in traceback[-1]


def test_configured_credentials_are_redacted(configured):
    effective_credentials(AdminCredentials("ops", "configured-password-1", "configured-token-22"), "0.0.0.0")
    logging.getLogger("waitress").warning("Authorization: Bearer configured-token-22 / configured-password-1")
    text = configured.read_text(encoding="utf-8")
    assert "configured-" not in text and "Bearer *** / ***" in text
