"""Upload once per volume: server session ids keyed by the volume's fingerprint (voxels + geometry)."""

from __future__ import annotations

from collections import OrderedDict

from .volume import Volume


class SessionCache:
    """The latest `capacity` volumes' session ids; an edited or moved volume gets a new fingerprint."""

    def __init__(self, capacity: int = 8):
        self.capacity = capacity
        self._ids: OrderedDict[str, str] = OrderedDict()

    def get(self, volume: Volume) -> str | None:
        session_id = self._ids.get(volume.fingerprint)
        if session_id is not None:
            self._ids.move_to_end(volume.fingerprint)
        return session_id

    def put(self, volume: Volume, session_id: str) -> None:
        self._ids[volume.fingerprint] = session_id
        self._ids.move_to_end(volume.fingerprint)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def forget(self, volume: Volume) -> None:
        self._ids.pop(volume.fingerprint, None)

    def session_ids(self) -> list[str]:
        return list(self._ids.values())
