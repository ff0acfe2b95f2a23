"""The AIAA REST client the Slicer module uses: typed errors, timeouts, sessions with one re-upload.

Volumes go up as NIfTI (`Volume.to_nifti`); masks come back as NIfTI in a multipart reply and are
checked against the sent grid before the caller sees them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import default

import numpy as np
import requests

from .errors import AIAAError, BadInput, ModelNotFound, ServerBusy, ServerUnreachable, SessionExpired
from .nifti import read_nifti, write_nifti
from .sessions import SessionCache
from .volume import Volume, check_mask_geometry, refuse_sheared

SESSION_EXPIRED = 440
SESSION_GONE = (404, SESSION_EXPIRED)  # what a server answers for a session it no longer holds
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """One entry of GET /v1/models."""

    name: str
    type: str
    labels: list[str] | dict = field(default_factory=list)
    description: str = ""
    version: str = ""
    deepgrow: str | None = None

    @classmethod
    def from_json(cls, obj: dict) -> ModelInfo:
        return cls(
            name=str(obj["name"]),
            type=str(obj.get("type", "")),
            labels=obj.get("labels") or [],
            description=str(obj.get("description", "")),
            version=str(obj.get("version", "")),
            deepgrow=obj.get("deepgrow"),
        )


@dataclass(frozen=True, eq=False)
class Result:
    """A mask ([i, j, k], on the sent grid), the reply's params, and whether a re-upload was needed."""

    mask: np.ndarray
    params: dict
    reuploaded: bool = False


class Client:
    """Talks to one AIAA server. With `use_sessions`, each volume is uploaded once and reused by id."""

    def __init__(
        self,
        url: str,
        timeout: float = 60.0,
        use_sessions: bool = True,
        compress: bool = True,
        session_expiry: int = 3600,
        sessions: SessionCache | None = None,
        http: requests.Session | None = None,
    ):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.use_sessions = use_sessions
        self.compress = compress
        self.session_expiry = session_expiry
        self.sessions = sessions if sessions is not None else SessionCache()
        self.http = http if http is not None else requests.Session()

    # ------------------------------------------------------------------------------------------ API
    def models(self, model_type: str | None = None) -> list[ModelInfo]:
        reply = self._request("GET", "/v1/models", params={"type": model_type} if model_type else None)
        return [ModelInfo.from_json(m) for m in reply.json()]

    def segment(self, model: str, volume: Volume) -> Result:
        return self._infer("segmentation", model, {}, volume)

    def annotate_extreme_points(self, model: str, volume: Volume, points: list[list[int]]) -> Result:
        return self._infer("dextr3d", model, {"points": points}, volume)

    def deepgrow(
        self, model: str, volume: Volume, foreground: list[list[int]], background: list[list[int]]
    ) -> Result:
        params = {"foreground": foreground, "background": background, "current_point": (foreground + background)[-1]}
        return self._infer("deepgrow", model, params, volume)

    def create_session(self, volume: Volume) -> str:
        """Upload the volume; remember and return its session id."""
        reply = self._request(
            "PUT", "/session/", params={"expiry": self.session_expiry}, files={"image": self._file(volume)}
        )
        session_id = str(reply.json()["session_id"])
        self.sessions.put(volume, session_id)
        return session_id

    def save_label(
        self, volume: Volume, labels: np.ndarray, credentials: tuple[str, str], tag: str = "final"
    ) -> dict:
        """Save a finished label (an [i, j, k] label map on the volume's grid) into the server's training
        datastore (`PUT /v1/label`, admin credentials); the volume goes as its session when it has one.
        Returns the server's ids: {"image", "label", "tag"}."""
        labels = np.asarray(labels)
        if labels.shape != volume.shape:
            raise BadInput(f"The label ({labels.shape}) is not on the volume's grid ({volume.shape}).")
        if not labels.any():
            raise BadInput("The label is empty: draw or segment the structure before saving it.")
        user, password = credentials
        if not user or not password:
            raise BadInput("Saving labels for training needs the server's admin user and password (Settings).")
        nifti = write_nifti(labels.astype(np.uint8), volume.ijk_to_ras)
        files = {"label": ("label.nii.gz", nifti, "application/octet-stream")}
        session_id = self.sessions.get(volume) if self.use_sessions else None
        if session_id:
            try:
                query = {"session_id": session_id, "tag": tag}
                return self._request("PUT", "/v1/label", params=query, files=files, auth=(user, password)).json()
            except SessionExpired:  # the server forgot the volume: send it with the label
                self.sessions.forget(volume)
        files["datapoint"] = self._file(volume)
        return self._request("PUT", "/v1/label", params={"tag": tag}, files=files, auth=(user, password)).json()

    def delete_session(self, session_id: str) -> None:
        try:
            self._request("DELETE", f"/session/{session_id}")
        except AIAAError as error:
            if error.status not in SESSION_GONE:  # already gone is what we wanted
                raise

    def delete_superseded_sessions(self) -> None:
        """Free the server of sessions this client can no longer use; a failure here never fails a request
        (the server drops them when they expire)."""
        for session_id in self.sessions.take_superseded():
            try:
                self.delete_session(session_id)
            except AIAAError as error:
                log.warning("Could not delete a superseded AIAA session (it will expire on the server): %s", error)

    # ------------------------------------------------------------------------------------ internals
    def _infer(self, op: str, model: str, params: dict, volume: Volume) -> Result:
        reuploaded = False
        if not self.use_sessions:
            reply = self._post(op, model, params, files={"image": self._file(volume)})
        else:
            session_id = self.sessions.get(volume) or self.create_session(volume)
            try:
                reply = self._post(op, model, params, session_id=session_id)
            except SessionExpired:  # the server forgot it: upload once more, then give up
                self.sessions.forget(volume)
                reply = self._post(op, model, params, session_id=self.create_session(volume))
                reuploaded = True
        result_params, mask_bytes = _parse_result(reply)
        mask, affine = read_nifti(mask_bytes)
        check_mask_geometry(mask, affine, volume)
        self.delete_superseded_sessions()  # once the server has answered: it is there to be asked
        return Result(mask=mask, params=result_params, reuploaded=reuploaded)

    def _post(self, op: str, model: str, params: dict, session_id: str | None = None, files: dict | None = None):
        query = {"model": model}
        if session_id:
            query["session_id"] = session_id
        # always multipart, `params` first and without filename, as the AIAA servers parse it
        fields = {"params": (None, json.dumps({**params, "result_extension": ".nii.gz"}), "application/json")}
        return self._request("POST", f"/v1/{op}", params=query, files={**fields, **(files or {})})

    def _file(self, volume: Volume) -> tuple[str, bytes, str]:
        refuse_sheared(volume.ijk_to_ras)
        name = "volume.nii.gz" if self.compress else "volume.nii"
        return name, volume.to_nifti(compress=self.compress), "application/octet-stream"

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        try:
            reply = self.http.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.Timeout as error:
            raise ServerUnreachable(
                f"The AIAA server at {self.url} did not answer within {self.timeout:g} s. It may be busy; "
                "try again or raise the timeout in Settings."
            ) from error
        except requests.RequestException as error:
            raise ServerUnreachable(
                f"Cannot reach the AIAA server at {self.url}. Check the address and that the server is running."
            ) from error
        if reply.status_code != 200:
            raise _error_for(reply)
        return reply


def _error_for(reply: requests.Response) -> AIAAError:
    status = reply.status_code
    try:
        detail = reply.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        detail = reply.text.strip()[:300] or reply.reason
    if status == SESSION_EXPIRED:
        return SessionExpired(
            f"The server no longer holds the uploaded volume ({detail}). Run the step again to re-upload it.",
            status,
        )
    if status in (401, 403):
        return BadInput(f"The server refused the admin credentials: {detail}", status)
    if status == 404:
        return ModelNotFound(f"The server does not have this model ({detail}). Press Connect to refresh the list.",
                             status)
    if status in (400, 413, 415):
        return BadInput(detail, status)
    if status == 503:
        return ServerBusy(f"The server is busy: {detail} Try again in a minute.", status)
    return AIAAError(f"The server failed (HTTP {status}): {detail}", status)


def _parse_result(reply: requests.Response) -> tuple[dict, bytes]:
    """(params, mask file bytes) of a multipart result reply, parsed with the stdlib (Slicer has no toolbelt)."""
    content_type = reply.headers.get("Content-Type", "")
    if not content_type.startswith("multipart/"):
        raise AIAAError(f"The server sent '{content_type or 'nothing'}' instead of a mask; is it an AIAA server?")
    message = BytesParser(policy=default).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n"
                                                     + reply.content)
    params, mask = {}, None
    for part in message.iter_parts():
        payload = part.get_payload(decode=True) or b""
        if part.get_filename():
            mask = payload
        elif part.get_param("name", header="content-disposition") == "params" and payload.strip():
            params = json.loads(payload)
    if mask is None:
        raise AIAAError("The server's reply holds no mask; the model may not produce images.")
    return params, mask
