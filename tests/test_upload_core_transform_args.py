"""An uploaded config may name the core's own post-transforms (`aiaa.transforms.FitToPointsBoxd`, …), as
the app's exports do: their arguments are data keys and a CT window, and anything else is a 400 at install."""

from __future__ import annotations

import pytest

from server.errors import BadRequest
from server.model_formats.mmar import build_transforms

BAD = [
    ("GrowInPointsBoxd", {"window": [1, 2, 3]}),
    ("GrowInPointsBoxd", {"window": [600, -400]}),
    ("GrowInPointsBoxd", {"window": [-400, "inf"]}),
    ("GrowInPointsBoxd", {"image_key": {"a": 1}}),
    ("TrimToTissued", {"window": [600, -400]}),
    ("TrimToTissued", {"image_key": {"a": 1}}),
    ("FitToPointsBoxd", {"points_key": {"a": 1}}),
    ("FitToPointsBoxd", {"points_key": "x" * 65}),
    ("KeepPlausibleSpleend", {"ref_image": 3}),
]


@pytest.mark.parametrize(("name", "args"), BAD, ids=[f"{n}-{sorted(a)[0]}-{i}" for i, (n, a) in enumerate(BAD)])
def test_bad_core_transform_arguments_are_refused(name, args):
    with pytest.raises(BadRequest) as refused:
        build_transforms([{"name": f"aiaa.transforms.{name}", "args": {"keys": "pred", **args}}], "post_transforms")
    assert refused.value.status == 400 and name in refused.value.message


def test_the_exported_arguments_build():
    built = build_transforms(
        [
            {"name": "aiaa.transforms.FitToPointsBoxd", "args": {"keys": "pred", "points_key": "points"}},
            {"name": "aiaa.transforms.GrowInPointsBoxd", "args": {"keys": "pred", "window": [-400, 600]}},
            {"name": "aiaa.transforms.TrimToTissued", "args": {"keys": "pred", "window": [-400, 600]}},
            {"name": "aiaa.transforms.KeepPlausibleSpleend", "args": {"keys": "pred", "ref_image": "image"}},
        ],
        "post_transforms",
    )
    names = ["FitToPointsBoxd", "GrowInPointsBoxd", "TrimToTissued", "KeepPlausibleSpleend"]
    assert [type(t).__name__ for t in built] == names
    assert built[1].window == [-400.0, 600.0]
