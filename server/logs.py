"""Logging to stderr and to a rotating file that `/logs` serves, kept free of secrets and patient data.

Both handlers share one filter and one formatter, so what they drop or hide does not depend on the
level a library sets on its own logger (MONAI Label sets its loggers back to INFO on every inference
and then logs the request: click points, voxel excerpts, file paths):
- below WARNING only this server's own loggers pass (`OWN_LOGGERS`); every library's INFO is dropped;
- every session id (a UUID, wherever it appears: a message, a path, a traceback) becomes `sid-` and a
  keyed hash, the same for one id within one run (its lines can be followed) but not reversible;
- the admin password and token (`register_secret`) become `***`;
- a record is capped (each of its lines at `RECORD_LIMIT`, the whole at that or, with a traceback, at
  `TRACEBACK_LIMIT`; head and tail kept), so no request can push the history out of the rotated files;
  lines after a record's first are indented, so no value can forge a record.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import logging.handlers
import re
import secrets
import sys
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FILE = "aiaa.log"
LOG_FILE_BYTES = 10 * 1024**2
LOG_BACKUPS = 5
LOGGED_VALUE_LIMIT = 200  # characters of a client-supplied value kept in a log line
RECORD_LIMIT = 2000  # characters of one formatted record
TRACEBACK_LIMIT = 8000  # ... of one with a traceback (the first and last frames kept)
OWN_LOGGERS = ("server", "aiaa", "waitress")  # below WARNING, only these reach the handlers
CONTINUATION = "\n    | "

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_TAG_KEY = secrets.token_bytes(16)  # per process: tags cannot be matched against guessed ids
_secrets: set[str] = set()


def loggable(value: str) -> str:
    """A client-supplied value fit for one log line: control characters escaped (no forged lines), length capped."""
    text = value.encode("unicode_escape").decode("ascii")
    return text if len(text) <= LOGGED_VALUE_LIMIT else text[:LOGGED_VALUE_LIMIT] + "..."


def session_tag(session_id: str) -> str:
    """What the log says instead of a session id: a short keyed hash (anyone who reads the log could
    otherwise run models on, read or delete that clinician's session)."""
    digest = hmac.new(_TAG_KEY, session_id.encode("utf-8", "replace"), hashlib.sha256).hexdigest()
    return f"sid-{digest[:10]}"


def register_secret(value: str | None) -> None:
    """Never write `value` (a password, a token) to any log: it is replaced by `***`."""
    if value and len(value) >= 4:  # a shorter one would blank out ordinary words
        _secrets.add(value)


def redact(text: str) -> str:
    """`text` with every session id replaced by its tag and every registered secret by `***`."""
    text = _UUID.sub(lambda m: session_tag(m.group(0).lower()), text)
    for value in sorted(_secrets, key=len, reverse=True):
        text = text.replace(value, "***")
    return text


def cap(text: str, limit: int) -> str:
    """At most `limit` characters: the head and the tail, and how much was cut between them."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} [... {len(text) - 2 * half} characters cut ...] {text[-half:]}"


class OwnLoggersOnly(logging.Filter):
    """Below WARNING, only records of this server's own loggers; libraries' INFO and DEBUG are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        name = record.name
        return any(name == own or name.startswith(own + ".") for own in OWN_LOGGERS)


class SafeFormatter(logging.Formatter):
    """Formats, then redacts, caps and indents the record's continuation lines."""

    def format(self, record: logging.LogRecord) -> str:
        lines = redact(super().format(record)).replace("\r", "\\r").split("\n")
        text = "\n".join(cap(line, RECORD_LIMIT) for line in lines)  # each line, then the whole record
        text = cap(text, TRACEBACK_LIMIT if record.exc_info or record.exc_text else RECORD_LIMIT)
        return text.replace("\n", CONTINUATION)


def configure_logging(log_dir: Path, level: int = logging.INFO) -> Path:
    """Send the root logger to stderr and to `log_dir/aiaa.log` (rotated at 10 MB, 5 kept), both filtered."""
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / LOG_FILE
    formatter = SafeFormatter(LOG_FORMAT)
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in (
        logging.StreamHandler(sys.stderr),
        logging.handlers.RotatingFileHandler(path, maxBytes=LOG_FILE_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"),
    ):
        handler.setFormatter(formatter)
        handler.addFilter(OwnLoggersOnly())
        root.addHandler(handler)
    # Spares building the records at all while their libraries leave these levels alone.
    for noisy in ("monailabel", "monai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return path
