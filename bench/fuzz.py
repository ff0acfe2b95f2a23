"""Property-based fuzzing of the whole API from its own OpenAPI document (Schemathesis) against a live server.

    .venv/bin/python bench/fuzz.py [--examples 60] [--minutes 10] [--seed 0] [--out bench/results/fuzz.md]

Starts `aiaa serve` on loopback (with admin credentials, so that the admin API is reached too), loads
`/openapi.json`, and for every operation sends requests generated from it: valid ones (positive) and
ones that break the document on purpose (negative); every other valid inference or polygon request
runs on a live session (a CT phantom), so that its generated params reach the models. Each reply is
checked: no 5xx, a status the document lists, a content type it lists, a body that matches its
schema. Every failing request is recorded with its curl command; a Markdown report (date, machine,
command, statuses per operation, findings) is written. `tests/test_fuzz_api.py` runs the same loop, briefer.
"""

from __future__ import annotations

import argparse
import base64
import collections
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import hypothesis
import requests
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode, openapi
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

REPO = Path(__file__).resolve().parents[1]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
REQUEST_TIMEOUT_S = 120
ADMIN = ("fuzz-admin", secrets.token_urlsafe(16))  # the fuzzed server's, made up for each run
SERVER_ARGS = ("--models", "deepgrow_3d,segmentation_spleen", "--max-upload-mb", "4", "--no-warm-up")
SERVER_ENV = {"AIAA_ADMIN_USER": ADMIN[0], "AIAA_ADMIN_PASSWORD": ADMIN[1]}


@dataclass
class Finding:
    operation: str
    mode: str
    check: str
    status: int | None
    request: str  # as a curl command
    detail: str


@dataclass
class Report:
    statuses: dict[str, collections.Counter] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    findings: dict[tuple[str, str, int | None], Finding] = field(default_factory=dict)  # one per (op, check, status)
    operations: list[str] = field(default_factory=list)  # those Schemathesis generated requests for
    examples: int = 0
    seconds: float = 0.0
    stopped_early: bool = False


def auth_header(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def failures_of(error: BaseException) -> Iterable[tuple[str, str]]:
    """(title, message) of each failed check."""
    if isinstance(error, FailureGroup):
        for inner in error.exceptions:
            yield from failures_of(inner)
    elif isinstance(error, Failure):
        yield error.title, error.message or ""
    else:
        yield type(error).__name__, str(error)


def fuzz(
    url: str,
    *,
    examples: int,
    seed: int = 0,
    seconds: float = 600.0,
    headers: dict[str, str] | None = None,
    keep: Callable[[str], bool] = lambda operation: True,
    shrink: bool = False,
    session_id: str | None = None,
) -> Report:
    """Fuzz every operation of `url`'s /openapi.json that `keep` accepts ("PUT /session/"), in both modes,
    `examples` requests each at most, until `seconds` have passed; findings deduplicated.

    With `session_id` (a live session, see `upload_session`), every other valid request to an operation
    that takes one uses it instead of the generated image, so that the generated `params` reach the
    models and the polygon code rather than stopping at the image decoder."""
    schema = openapi.from_url(f"{url}/openapi.json")
    http = requests.Session()
    report = Report()
    started = time.monotonic()
    deadline = started + seconds
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])

    def send(name: str, mode: GenerationMode, case) -> None:
        if time.monotonic() > deadline:
            report.stopped_early = True
            return
        report.examples += 1
        if session_id and mode == GenerationMode.POSITIVE and report.examples % 2 and takes_session(case):
            use_session(case, session_id)
        try:
            response = case.call(session=http, headers=headers, timeout=REQUEST_TIMEOUT_S)
        except requests.RequestException as error:  # the server closed or timed out: a finding too
            key = (name, "connection", None)
            report.findings.setdefault(key, Finding(name, str(mode), "connection", None, curl(case), str(error)))
            return
        report.statuses[name][response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except AssertionError as error:
            for title, message in failures_of(error):
                detail = f"{title}: {message}"[:1500]
                if response.status_code >= 500:
                    detail += "\n" + response.text[:1000]
                finding = Finding(name, str(mode), title, response.status_code, curl(case), detail)
                report.findings.setdefault((name, title, response.status_code), finding)

    for result in schema.get_all_operations():
        operation = result.ok()
        name = f"{operation.method.upper()} {operation.path}"
        if not keep(name):
            continue
        report.operations.append(name)
        for mode in MODES:
            test = given(case=operation.as_strategy(generation_mode=mode))(sender(send, name, mode))
            test = settings(
                max_examples=examples,
                deadline=None,
                database=None,
                phases=phases,
                suppress_health_check=list(HealthCheck),
                report_multiple_bugs=False,
            )(test)
            try:
                hypothesis.seed(seed)(test)()
            except hypothesis.errors.Unsatisfiable:  # nothing to break on purpose (no parameters, no body)
                pass
        print(f"fuzzed {name}: {dict(report.statuses[name])}", file=sys.stderr, flush=True)
    report.seconds = time.monotonic() - started
    return report


def takes_session(case) -> bool:
    return case.method.upper() == "POST" and any(p.name == "session_id" for p in case.operation.query)


def use_session(case, session_id: str) -> None:
    """The request on the live session: its session_id, its params, no image part."""
    case.query = {**(case.query or {}), "session_id": session_id}
    if isinstance(case.body, dict):
        case.body = {name: value for name, value in case.body.items() if name == "params"}


def upload_session(url: str) -> str:
    """A small CT phantom as a session; its id."""
    from aiaa_core.phantoms import make_phantom, write_phantom

    with tempfile.TemporaryDirectory(prefix="aiaa-fuzz-image-") as tmp:
        image, _ = write_phantom(make_phantom(31, size=(48, 40, 32), spacing=(6.0, 6.0, 6.0)), Path(tmp), stem="ct")
        reply = requests.put(f"{url}/session/", files={"image": (image.name, image.read_bytes())}, timeout=120)
    reply.raise_for_status()
    return reply.json()["session_id"]


def sender(send: Callable, name: str, mode: GenerationMode) -> Callable:
    """`send` for one operation and mode, as the one-argument function that @given wants."""

    def send_case(case) -> None:
        send(name, mode, case)

    return send_case


def curl(case) -> str:
    try:
        command = case.as_curl_command()
    except Exception:  # an unusual body the helper cannot render
        command = f"{case.method} {case.formatted_path} query={case.query!r}"
    return command if len(command) <= 600 else command[:600] + f" ... ({len(command)} characters)"


def report_markdown(report: Report, header: dict) -> str:
    lines = [
        "# API fuzzing (Schemathesis, issue 12)",
        "",
        f"- date: {header['date']}",
        f"- machine: {header['machine']}",
        f"- command: `{header['command']}`",
        f"- schemathesis {header['schemathesis']}, hypothesis {header['hypothesis']}; checks: "
        + ", ".join(check.__name__ for check in CHECKS),
        f"- requests: {report.examples} in {report.seconds:.0f} s"
        + (" (stopped at the time limit)" if report.stopped_early else ""),
        f"- findings: {len(report.findings)}",
        "",
        "## Statuses per operation",
        "",
        "| operation | requests | statuses |",
        "|---|---:|---|",
    ]
    for name, counts in sorted(report.statuses.items()):
        lines.append(f"| `{name}` | {sum(counts.values())} | {dict(sorted(counts.items()))} |")
    lines += ["", "## Findings", ""]
    if not report.findings:
        lines.append("None: no 5xx, and every reply conformed to the document.")
    for finding in report.findings.values():
        lines += [
            f"### `{finding.operation}` ({finding.mode}): {finding.check}, status {finding.status}",
            "",
            "```",
            finding.request,
            "```",
            "",
            "```",
            finding.detail,
            "```",
            "",
        ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=60, help="requests per operation and mode, at most")
    parser.add_argument("--minutes", type=float, default=10.0, help="stop after this long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--url", help="fuzz this running server instead of starting one (admin: --user/--password)")
    parser.add_argument("--user", default=ADMIN[0])
    parser.add_argument("--password", default=ADMIN[1])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "fuzz.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    import processes
    import schemathesis
    from run_all import run_header

    args = parse_args(argv)
    header = run_header("fuzz.py", argv, schemathesis=schemathesis.__version__, hypothesis=hypothesis.__version__)
    headers = auth_header(args.user, args.password)

    def run(url: str) -> Report:
        return fuzz(
            url,
            examples=args.examples,
            seed=args.seed,
            seconds=args.minutes * 60,
            headers=headers,
            session_id=upload_session(url),
        )

    if args.url:
        report = run(args.url)
    else:
        os.environ.update(SERVER_ENV)
        with tempfile.TemporaryDirectory(prefix="aiaa-fuzz-") as tmp:
            server = processes.start_aiaa(Path(tmp), *SERVER_ARGS)  # inherits the admin credentials above
            try:
                report = run(server.url)
            finally:
                server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report_markdown(report, header), encoding="utf-8")
    print(args.out.read_text(encoding="utf-8"))
    return args.out


if __name__ == "__main__":
    main()
