"""Property-based fuzzing of the whole API from its own OpenAPI document (Schemathesis, issue 12): against a
live server with admin credentials (and a live session for the inference and polygon requests), every
operation gets valid and deliberately invalid requests; zero 5xx, and every reply's status, content type
and body conform to the document. Bounded: a few examples per operation and mode, and a time limit
(bench/fuzz.py runs the same loop for longer). No operation is left out."""

from __future__ import annotations

import pytest
import requests
from conftest import start_server, stop_server
from fuzz import ADMIN, SERVER_ARGS, SERVER_ENV, auth_header, fuzz, upload_session  # noqa: E402

EXAMPLES = 5  # per operation and mode
TIME_LIMIT_S = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = start_server(tmp_path_factory.mktemp("fuzz"), *SERVER_ARGS, env=SERVER_ENV)
    yield live
    stop_server(live)


def test_every_operation_conforms_and_never_5xx(server):
    report = fuzz(
        server.url,
        examples=EXAMPLES,
        seed=0,
        seconds=TIME_LIMIT_S,
        headers=auth_header(*ADMIN),
        session_id=upload_session(server.url),  # generated params reach the models on a real image
    )
    findings = "\n\n".join(
        f"{f.operation} ({f.mode}) {f.check} status {f.status}\n{f.request}\n{f.detail}"
        for f in report.findings.values()
    )
    assert not report.findings, findings
    operations = requests.get(f"{server.url}/openapi.json", timeout=30).json()["paths"]
    documented = {f"{method.upper()} {path}" for path, ops in operations.items() for method in ops}
    # every operation was reached, none left out (Schemathesis does not fuzz the document's own URL)
    assert set(report.statuses) == set(report.operations) == documented - {"GET /openapi.json"}
    assert all(status < 500 for counts in report.statuses.values() for status in counts)
