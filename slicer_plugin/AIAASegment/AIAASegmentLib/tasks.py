"""Run a server call off the GUI thread; the GUI polls `done()` and may cancel (the result is dropped)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Cancelled(Exception):
    """The user cancelled; the late result was discarded."""


class BackgroundTask:
    """One call on a daemon thread. Requests cannot be interrupted, so cancel means 'ignore the answer'."""

    def __init__(self, function: Callable[..., Any], *args: Any, **kwargs: Any):
        self._finished = threading.Event()
        self._cancelled = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(function, args, kwargs), daemon=True)
        self._thread.start()

    def _run(self, function: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        try:
            self._value = function(*args, **kwargs)
        except BaseException as error:  # handed to the GUI thread by result()
            self._error = error
        finally:
            self._finished.set()

    def done(self) -> bool:
        return self._finished.is_set() or self._cancelled

    def wait(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    def cancel(self) -> None:
        self._cancelled = True

    def result(self) -> Any:
        """The call's return value; re-raises its exception; `Cancelled` after cancel()."""
        if self._cancelled:
            raise Cancelled("Cancelled; the server's answer will be ignored.")
        if not self._finished.is_set():
            raise RuntimeError("result() called before the task finished")
        if self._error is not None:
            raise self._error
        return self._value
