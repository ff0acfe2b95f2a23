"""Upload once per volume: server session ids keyed by the volume's fingerprint (voxels + geometry)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from .volume import Volume


class SessionCache:
    """The latest `capacity` volumes' session ids; an edited or moved volume gets a new fingerprint.

    A session that can no longer be used (the older export of a volume that was edited since, or one
    pushed out of the list) is superseded: it waits in `take_superseded()` to be deleted on the server,
    which would otherwise hold its image until it expires. The panel and the effect may each run a
    request on a worker thread, hence the lock.
    """

    def __init__(self, capacity: int = 8):
        self.capacity = capacity
        self._ids: OrderedDict[str, tuple[str, str | None]] = OrderedDict()  # fingerprint → (id, source)
        self._superseded: list[str] = []
        self._lock = threading.Lock()

    def get(self, volume: Volume) -> str | None:
        with self._lock:
            entry = self._ids.get(volume.fingerprint)
            if entry is None:
                return None
            self._ids.move_to_end(volume.fingerprint)
            return entry[0]

    def put(self, volume: Volume, session_id: str) -> None:
        with self._lock:
            for fingerprint, (old_id, source) in list(self._ids.items()):
                same_content = fingerprint == volume.fingerprint
                older_export = volume.source is not None and source == volume.source
                if (same_content or older_export) and old_id != session_id:
                    del self._ids[fingerprint]
                    self._superseded.append(old_id)
            self._ids[volume.fingerprint] = (session_id, volume.source)
            self._ids.move_to_end(volume.fingerprint)
            while len(self._ids) > self.capacity:
                self._superseded.append(self._ids.popitem(last=False)[1][0])

    def forget(self, volume: Volume) -> None:
        """Drop a session the server no longer holds (nothing to delete)."""
        with self._lock:
            self._ids.pop(volume.fingerprint, None)

    def session_ids(self) -> list[str]:
        with self._lock:
            return [session_id for session_id, _ in self._ids.values()]

    def take_superseded(self) -> list[str]:
        """The superseded session ids not handed out yet; the caller deletes them on the server."""
        with self._lock:
            taken, self._superseded = self._superseded, []
            return taken
