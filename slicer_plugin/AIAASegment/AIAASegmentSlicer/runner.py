"""Runs a prepared request without freezing Slicer: consent first, a worker thread polled by a Qt timer,
a progress bar with Cancel, then the result applied on the GUI thread. App-only (Qt)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import qt
import slicer
from AIAASegmentLib import AIAAError, BackgroundTask, Cancelled

from .logic import AIAALogic, Request

POLL_MS = 100
CONSENT_TEXT = (
    "This sends the image '{name}' ({shape} voxels) to the AIAA server at {url}.\n\n"
    "Only send images you are allowed to share with that server. Continue?"
)


class RequestRunner:
    """One request at a time; `progress` (QProgressBar), `cancel` (QPushButton), `status` (QLabel) are the UI."""

    def __init__(self, logic: AIAALogic, progress, cancel_button, status_label):
        self.logic = logic
        self.progress, self.cancel_button, self.status = progress, cancel_button, status_label
        self.task: BackgroundTask | None = None
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self._poll)
        self.cancel_button.connect("clicked()", self.cancel)
        self._busy(False)

    def start(self, prepare: Callable[[], Request], apply: Callable, what: str, volume_name: str) -> None:
        """`prepare()` → Request (GUI thread); `apply(result, request)` → message, after the network call."""
        if self.task is not None:
            self.status.text = "Still working on the previous request; wait or press Cancel."
            return
        try:
            request = prepare()
        except AIAAError as error:
            self._show_error(error)
            return
        if request.consent_needed and not self._ask_consent(request, volume_name):
            self.status.text = "Not sent: the image was not shared."
            return
        self.logic.grant_consent(request.volume)
        self.request, self.apply, self.what = request, apply, what
        self.task = BackgroundTask(request.run)
        self.status.text = f"{what} with {request.model.name}…"
        self._busy(True)
        self.timer.start()

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _poll(self) -> None:
        if self.task is None or not self.task.done():
            return
        self.timer.stop()
        task, self.task = self.task, None
        self._busy(False)
        try:
            result = task.result()
            self.status.text = self.apply(result, self.request)
        except Cancelled:
            self.status.text = f"{self.what} cancelled."
        except AIAAError as error:
            self._show_error(error)
        except Exception as error:  # a bug: keep Slicer alive and say so
            logging.exception("AIAA request failed")
            self._show_error(f"Unexpected error ({error}); details are in the Python console.")

    def _ask_consent(self, request: Request, volume_name: str) -> bool:
        text = CONSENT_TEXT.format(name=volume_name, shape=" × ".join(map(str, request.volume.shape)),
                                   url=self.logic.client.url)
        return slicer.util.confirmYesNoDisplay(text, windowTitle="Send image to AIAA server?")

    def _busy(self, busy: bool) -> None:
        self.progress.visible = busy
        self.progress.setRange(0, 0)  # indeterminate: the server reports no progress
        self.cancel_button.visible = busy

    def _show_error(self, error) -> None:
        self.status.text = str(error)
        slicer.util.warningDisplay(str(error), windowTitle="AIAA")
