"""Label value ↔ name: from the model's `labels` and the reply's `label_names`, surviving gaps.

A model's `labels` list means value i+1 = labels[i]; a reply's `label_names` is {name: value}
(some servers send {value: name}). Values may have gaps (1, 2, 6), so nothing here assumes
that the n-th name is value n once a reply says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def label_names(model_labels: Sequence[str] | Mapping, reply_names: Mapping | None = None) -> dict[int, str]:
    """{value: name}: the reply's names win over the model's listing."""
    names = _as_value_map(model_labels) if isinstance(model_labels, Mapping) else {
        i + 1: str(name) for i, name in enumerate(model_labels)
    }
    names.update(_as_value_map(reply_names or {}))
    return names


def segments_in_mask(mask: np.ndarray, names: Mapping[int, str]) -> list[tuple[int, str]]:
    """(value, name) for each label present in the mask, unnamed values as 'Label N', background excluded."""
    values = [int(v) for v in np.unique(mask) if v != 0]
    return [(v, names.get(v, f"Label {v}")) for v in values]


def compact_labels(mask: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """The mask with values[n] renumbered n+1 (others 0), so labels 1, 2, 6 map onto three segments."""
    lookup = np.zeros(int(max(values, default=0)) + 1, dtype=np.uint16)
    lookup[list(values)] = np.arange(1, len(values) + 1)
    clipped = np.where((mask > 0) & (mask < len(lookup)), mask, 0).astype(np.intp)
    return lookup[clipped]


def _as_value_map(mapping: Mapping) -> dict[int, str]:
    out = {}
    for key, value in mapping.items():
        if _is_int(key) and not _is_int(value):
            out[int(key)] = str(value)
        elif _is_int(value):
            out[int(value)] = str(key)
    return out


def _is_int(x: object) -> bool:
    return isinstance(x, int) or (isinstance(x, str) and x.strip().isdigit())
