"""User settings of the module that outlive a Slicer session, as plain data (Slicer stores them in QSettings)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_HISTORY = 10
DEFAULT_URL = "http://127.0.0.1:5000"


@dataclass
class Preferences:
    use_sessions: bool = True
    compress: bool = True
    timeout_s: float = 60.0


def remember_url(history: list[str], url: str, limit: int = MAX_HISTORY) -> list[str]:
    """History with `url` (normalised) first, no duplicates, at most `limit` entries."""
    url = normalise_url(url)
    return [url, *[u for u in history if normalise_url(u) != url]][:limit]


def normalise_url(url: str) -> str:
    """Strip blanks and trailing slashes; assume http:// when no scheme is typed."""
    url = url.strip().rstrip("/")
    if url and "://" not in url:
        url = "http://" + url
    return url
