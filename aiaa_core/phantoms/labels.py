"""The phantoms' organ labels and the named orientations that tests and training cycle through."""

from __future__ import annotations

LABELS: dict[str, int] = {
    "spleen": 1,
    "liver": 2,
    "kidney_left": 3,
    "kidney_right": 4,
    "stomach": 5,
    "aorta": 6,
    "vertebra": 7,
    "ivc": 8,
    "pancreas": 9,
    "gallbladder": 10,
    "rib": 11,
}
# Named orientations cycled by tests and training; each keeps index axes left-right, front-back, head-foot, so
# the default field of view holds the spleen. make_phantom also takes any other axis code, e.g. "PIR".
ORIENTATIONS: tuple[str, ...] = ("RAS", "LPS", "LAS", "LPI", "oblique")
