"""The request and data keys the server and the app's tasks hand each other.

A task reads `PREPARED` from the request (its own `prepare(image)` output, which the server keeps in the
session) and may set `PRED_BOX` in its data (the box outside which the mask is all zero, so the server
describes the mask without scanning the whole volume).
"""

from __future__ import annotations

__all__ = ["PRED_BOX", "PREPARED", "data_key"]

PREPARED = "prepared"  # request key: the task's `prepare` output for the request's image
PRED_BOX = "pred_box"  # data key a task may set: [[i0, i1], [j0, j1], [k0, k1]], the mask is zero outside it


def data_key(value: object, argument: str) -> str:
    """A transform's argument that names a data key: a short string (uploaded configs set these too)."""
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise ValueError(f"'{argument}' must name a data key (a string of 1 to 64 characters)")
    return value
