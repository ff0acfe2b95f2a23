"""`aiaa models list|show|upload|delete`: the model repository's admin API from the command line.

Credentials: `--user`/`--password` or `--token`, else the server's own variables `AIAA_ADMIN_USER`,
`AIAA_ADMIN_PASSWORD`, `AIAA_ADMIN_TOKEN`. Errors print the server's one-line message and exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path

import requests
from requests_toolbelt import MultipartEncoder, MultipartEncoderMonitor
from tqdm import tqdm

TIMEOUT_S = 600  # an upload loads and test-runs the model before the server answers


def add_parser(commands) -> None:
    p = commands.add_parser("models", help="list, show, upload or delete the server's models (admin API)")
    p.add_argument("action", choices=("list", "show", "upload", "delete"))
    p.add_argument("name", nargs="?", help="model name (show, upload, delete)")
    p.add_argument("file", nargs="?", type=Path, help="upload: an MMAR/bundle archive, or a model file with --config")
    p.add_argument("--config", type=Path, help="upload: the config_aiaa.json that goes with a .ts/.pt/.onnx file")
    p.add_argument("--server", default="http://127.0.0.1:5000", help="server URL (default %(default)s)")
    p.add_argument("--user", default=os.environ.get("AIAA_ADMIN_USER"))
    p.add_argument("--password", default=os.environ.get("AIAA_ADMIN_PASSWORD"))
    p.add_argument("--token", default=os.environ.get("AIAA_ADMIN_TOKEN"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    if args.action != "list" and not args.name:
        raise SystemExit(f"aiaa models {args.action}: give the model name")
    if args.action == "upload" and args.file is None:
        raise SystemExit("aiaa models upload: give the file to upload (an archive, or a model file with --config)")
    server = args.server.rstrip("/")
    session = requests.Session()
    if args.token:
        session.headers["Authorization"] = f"Bearer {args.token}"
    elif args.user and args.password:
        session.auth = (args.user, args.password)
    try:
        if args.action == "list":
            list_models(session, server)
        elif args.action == "show":
            model = checked(session.get(f"{server}/v1/models", params={"model": args.name}, timeout=60))
            config = checked(session.get(f"{server}/admin/model/{args.name}", timeout=60))
            print(json.dumps({"model": model, "config": config}, indent=2))
        elif args.action == "upload":
            print(json.dumps(upload(session, server, args.name, args.file, args.config), indent=2))
        else:
            checked(session.delete(f"{server}/admin/model/{args.name}", timeout=60))
            print(f"deleted model '{args.name}'")
    except requests.ConnectionError:
        raise SystemExit(f"error: cannot reach the server at {server}") from None
    except OSError as exc:
        raise SystemExit(f"error: {exc}") from None


def checked(reply: requests.Response) -> dict | list:
    """The reply's JSON, or exit with the server's error message."""
    try:
        body = reply.json()
    except ValueError:
        body = None
    if reply.ok and body is not None:
        return body
    message = body["error"]["message"] if isinstance(body, dict) and "error" in body else reply.text[:300]
    raise SystemExit(f"error {reply.status_code}: {message}")


def list_models(session: requests.Session, server: str) -> None:
    models = checked(session.get(f"{server}/v1/models", timeout=60))
    rows = [("NAME", "TYPE", "SOURCE", "VERSION", "LABELS")]
    for m in models:
        rows.append((m["name"], m["type"], m.get("source", ""), str(m.get("version", "")), ",".join(m["labels"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def upload(session: requests.Session, server: str, name: str, file: Path, config: Path | None) -> dict:
    """PUT the file (and config) with a progress bar of the bytes sent."""
    with ExitStack() as files:
        fields = {"data": (file.name, files.enter_context(open(file, "rb")), "application/octet-stream")}
        if config:
            fields["config"] = (config.name, files.enter_context(open(config, "rb")), "application/json")
        encoder = MultipartEncoder(fields=fields)
        with tqdm(total=encoder.len, unit="B", unit_scale=True, desc=f"upload {name}", file=sys.stderr) as bar:
            monitor = MultipartEncoderMonitor(encoder, lambda m: bar.update(m.bytes_read - bar.n))
            reply = session.put(
                f"{server}/admin/model/{name}",
                data=monitor,
                headers={"Content-Type": monitor.content_type},
                timeout=TIMEOUT_S,
            )
    return checked(reply)
