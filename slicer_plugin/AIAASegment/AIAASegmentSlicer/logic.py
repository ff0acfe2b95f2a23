"""What the module panel and the Segment Editor effect do, without Qt: connect, check consent, turn clicks
into requests, and apply results. Each action has a GUI-thread `prepare` (reads MRML and checks everything
it can before anything is sent), a network `run` (safe on a worker thread: no MRML) and a GUI-thread
`apply` (checks the scene again, as it may have changed meanwhile, then writes MRML after an undo
checkpoint)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from AIAASegmentLib import (
    BadInput,
    Client,
    ModelInfo,
    Preferences,
    Result,
    Volume,
    label_names,
    segments_in_mask,
    validate_clicks,
    validate_extreme_points,
    world_to_ijk,
)

from . import mrml_bridge

MODEL_TYPES = {"segmentation": "Auto-segmentation", "annotation": "Extreme points", "deepgrow": "Deepgrow clicks"}


@dataclass
class Target:
    """The nodes a tool works on: the source volume, and the segmentation (and segment) the result goes to."""

    volume_node: object
    segmentation_node: object
    segment_id: str = ""


@dataclass
class Request:
    """One prepared server call: what to run off the GUI thread, what was sent, and where the result goes."""

    run: Callable[[], Result]
    volume: Volume
    model: ModelInfo
    consent_needed: bool
    target: Target


class AIAALogic:
    """State shared by the panel and the effect: the client, the served models, consents, exported volumes."""

    def __init__(self, preferences: Preferences | None = None):
        self.preferences = preferences or Preferences()
        self.client: Client | None = None
        self.models: list[ModelInfo] = []
        self._consented: set[str] = set()
        self._exported: dict[str, tuple[tuple, Volume]] = {}

    # ------------------------------------------------------------------------------------ server
    def connect(self, url: str) -> list[ModelInfo]:
        """Network: list the server's models with the current settings (a fresh client, fresh sessions)."""
        client = Client(
            url,
            timeout=self.preferences.timeout_s,
            use_sessions=self.preferences.use_sessions,
            compress=self.preferences.compress,
        )
        self.models = client.models()
        self.client = client
        return self.models

    def models_of_type(self, model_type: str) -> list[ModelInfo]:
        return [m for m in self.models if m.type == model_type]

    def empty_reason(self, model_type: str) -> str:
        """Why a model list is empty, as the panel shows it in place of the list."""
        if self.client is None:
            return "Not connected: enter the server address and press Connect."
        if self.models_of_type(model_type):
            return ""
        served = ", ".join(sorted({m.type for m in self.models})) or "none"
        return f"This server has no {MODEL_TYPES.get(model_type, model_type)} model (model types it serves: {served})."

    def model(self, name: str) -> ModelInfo:
        for model in self.models:
            if model.name == name:
                return model
        raise BadInput("Choose a model first (press Connect if the list is empty).")

    # ------------------------------------------------------------------------------------ consent
    def grant_consent(self, volume: Volume) -> None:
        self._consented.add(volume.fingerprint)

    def _needs_consent(self, volume: Volume) -> bool:
        return volume.fingerprint not in self._consented

    # ------------------------------------------------------------------------------------ prepare (GUI thread)
    def volume(self, volume_node) -> Volume:
        """The exported volume, re-exported only when the node's voxels, geometry or transforms changed."""
        key = mrml_bridge.volume_key(volume_node) if volume_node is not None else None
        cached = self._exported.get(volume_node.GetID()) if volume_node is not None else None
        if cached is not None and cached[0] == key:
            return cached[1]
        volume = mrml_bridge.volume_from_node(volume_node)
        self._exported[volume_node.GetID()] = (key, volume)
        return volume

    def prepare_auto_segmentation(self, target: Target, model_name: str) -> Request:
        client, model, volume = self._client(), self.model(model_name), self.volume(target.volume_node)
        mrml_bridge.check_segmentation(target.segmentation_node)
        return Request(lambda: client.segment(model.name, volume), volume, model, self._needs_consent(volume), target)

    def prepare_extreme_points(self, target: Target, points_world: np.ndarray, model_name: str) -> Request:
        client, model, volume = self._client(), self.model(model_name), self.volume(target.volume_node)
        points = validate_extreme_points(world_to_ijk(points_world, volume.ijk_to_world), volume.shape)
        mrml_bridge.check_segmentation(target.segmentation_node, target.segment_id)
        return Request(
            lambda: client.annotate_extreme_points(model.name, volume, points), volume, model,
            self._needs_consent(volume), target,
        )

    def prepare_deepgrow(
        self, target: Target, foreground_world: np.ndarray, background_world: np.ndarray, model_name: str
    ) -> Request:
        client, model, volume = self._client(), self.model(model_name), self.volume(target.volume_node)
        foreground, background = validate_clicks(
            world_to_ijk(foreground_world, volume.ijk_to_world),
            world_to_ijk(background_world, volume.ijk_to_world),
            volume.shape,
        )
        mrml_bridge.check_segmentation(target.segmentation_node, target.segment_id)
        return Request(
            lambda: client.deepgrow(model.name, volume, foreground, background), volume, model,
            self._needs_consent(volume), target,
        )

    def save_label(self, target: Target, credentials: tuple[str, str]) -> str:
        """Save the selected segment, on the volume's grid, into the server's training datastore (network:
        run it where a short wait is acceptable); returns the message for the status line."""
        client, volume = self._client(), self.volume(target.volume_node)
        labels = mrml_bridge.segment_labelmap(target.segmentation_node, target.segment_id, target.volume_node, volume)
        saved = client.save_label(volume, labels, credentials)
        name = target.segmentation_node.GetSegmentation().GetSegment(target.segment_id).GetName()
        return f"Saved '{name}' for training ({int(labels.sum())} voxels, image {saved['image']})."

    def _client(self) -> Client:
        if self.client is None:
            raise BadInput("Not connected: enter the server address and press Connect.")
        return self.client

    # ------------------------------------------------------------------------------------ apply (GUI thread)
    @staticmethod
    def apply_to_segment(result: Result, request: Request, checkpoint: Callable[[], None]) -> str:
        """Replace the target segment with the mask; returns the message for the status line."""
        target = request.target
        placement = _placement(request, target.segment_id)
        checkpoint()
        mrml_bridge.write_segment(result.mask, placement, target.segmentation_node, target.segment_id)
        return _done(result, f"{int(np.count_nonzero(result.mask))} voxels")

    @staticmethod
    def apply_auto_segmentation(result: Result, request: Request, checkpoint: Callable[[], None]) -> str:
        """One segment per label found, named from the model's labels (existing ones of that name replaced)."""
        names = segments_in_mask(result.mask, label_names(request.model.labels, result.params.get("label_names")))
        if not names:
            return _done(result, f"the model found nothing ({', '.join(map(str, request.model.labels))})")
        placement = _placement(request, None)
        checkpoint()
        mrml_bridge.write_label_segments(result.mask, names, placement, request.target.segmentation_node)
        return _done(result, "segments " + ", ".join(name for _, name in names))


def _placement(request: Request, segment_id: str | None) -> np.ndarray:
    """Check the target again and place the result on the volume where it is now: all that can refuse
    runs here, before the undo checkpoint, so Undo never gets an empty step."""
    target = request.target
    mrml_bridge.check_segmentation(target.segmentation_node, segment_id)
    grid = mrml_bridge.current_grid(target.volume_node, request.volume)
    return mrml_bridge.labelmap_placement(grid, target.segmentation_node)


def _done(result: Result, what: str) -> str:
    note = " (the server had forgotten the image; it was uploaded again)" if result.reuploaded else ""
    return f"Done: {what}{note}."


_shared: AIAALogic | None = None


def shared_logic() -> AIAALogic:
    """The one logic of the application, so the panel and the Segment Editor effect share a connection."""
    global _shared
    if _shared is None:
        _shared = AIAALogic()
    return _shared
