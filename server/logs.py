"""Logging to stderr and to a rotating file that `/logs` serves."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FILE = "aiaa.log"
LOGGED_VALUE_LIMIT = 200  # characters of a client-supplied value kept in a log line


def loggable(value: str) -> str:
    """A client-supplied value fit for one log line: control characters escaped (no forged lines), length capped."""
    text = value.encode("unicode_escape").decode("ascii")
    return text if len(text) <= LOGGED_VALUE_LIMIT else text[:LOGGED_VALUE_LIMIT] + "..."


def configure_logging(log_dir: Path, level: int = logging.INFO) -> Path:
    """Send the root logger to stderr and to `log_dir/aiaa.log` (rotated at 10 MB, 5 kept)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / LOG_FILE
    formatter = logging.Formatter(LOG_FORMAT)
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in (
        logging.StreamHandler(sys.stderr),
        logging.handlers.RotatingFileHandler(path, maxBytes=10 * 1024**2, backupCount=5, encoding="utf-8"),
    ):
        handler.setFormatter(formatter)
        root.addHandler(handler)
    # MONAI Label logs every transform at INFO; keep its chatter out of the service log.
    for noisy in ("monailabel", "monai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return path
