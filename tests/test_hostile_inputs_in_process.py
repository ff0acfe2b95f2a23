"""The checks behind the hostile-input refusals, in process (no server): the memory ledger charged from the
image header, the planner's grids against MONAI's, the lanes' shares of the budget, and the params module."""

from __future__ import annotations

import pytest
import SimpleITK as sitk

from server.budget import MemoryLedger, request_limit
from server.errors import BadRequest, PayloadTooLarge
from server.image_headers import ImageHeader
from server.image_reading import read_image

PER_REQUEST = request_limit(1536 * 2**20, 2, 1, batch=True)  # a segmentation's share of a 1.5 GiB budget


def test_ledger_is_charged_from_the_header_before_decoding(tmp_path):
    """In process: the ledger sees the image's header (and can refuse) before ITK decodes a pixel."""
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(sitk.Image([64, 48, 32], sitk.sitkInt16), str(path))
    seen: list[ImageHeader] = []

    class Refusing:
        def charge_image(self, header: ImageHeader) -> None:
            seen.append(header)
            raise PayloadTooLarge("refused")

    with pytest.raises(PayloadTooLarge):
        read_image([path], ledger=Refusing())
    assert seen[0].size == (64, 48, 32) and seen[0].nbytes == 64 * 48 * 32 * 2
    ledger = MemoryLedger(64 * 48 * 32 * 2)
    assert read_image([path], ledger=ledger).GetSize() == (64, 48, 32) and ledger.used == 64 * 48 * 32 * 2


class Pipeline:
    """A task stand-in: only its pre-transforms matter to the planner."""

    def __init__(self, *transforms):
        self.transforms = list(transforms)

    def pre_transforms(self, data=None):
        return self.transforms


@pytest.mark.parametrize(
    "direction",
    [
        (1, 0, 0, 0, 1, 0, 0, 0, 1),
        (0, -1, 0, 0, 0, -1, 1, 0, 0),  # i → S, j → R, k → A
        (0.8, -0.6, 0, 0.6, 0.8, 0, 0, 0, -1),  # oblique, k flipped
    ],
)
def test_planned_grids_match_what_monai_allocates(direction):
    """The planner's grids are the shapes MONAI's transforms really produce (without running them on
    anything large): orientation permutes, spacing resamples, resize and pads set the shape."""
    from monai import transforms as mt

    from aiaa_core.volumes import to_metatensor
    from server.budget import image_grid, plan

    image = sitk.Image([10, 20, 30], sitk.sitkInt16)
    image.SetSpacing((1.0, 1.5, 2.0))
    image.SetDirection(direction)
    steps = [
        mt.Orientationd(keys="image", axcodes="RAS"),
        mt.Spacingd(keys="image", pixdim=(1.0, 2.0, 4.0)),
        mt.SpatialPadd(keys="image", spatial_size=(16, 16, 16)),
        mt.DivisiblePadd(keys="image", k=8),
        mt.Resized(keys="image", spatial_size=(24, -1, 12)),
    ]
    data = {"image": to_metatensor(image)}
    grid = image_grid(ImageHeader.of(image))
    for step in steps:
        data = step(data)
        grid, _ = plan(step, grid)
        assert grid.shape == tuple(data["image"].shape[1:]), type(step).__name__


@pytest.mark.parametrize(("interactive", "batch"), [(2, 1), (4, 2), (3, 0), (0, 2), (1, 1)])
def test_lane_shares_never_sum_past_the_budget(interactive, batch):
    budget = 12 * 2**30
    click = request_limit(budget, interactive, batch, batch=False)
    segmentation = request_limit(budget, interactive, batch, batch=True)
    assert interactive * click + batch * segmentation <= budget
    if interactive and batch:
        assert interactive * click == batch * segmentation == budget // 2


def test_default_shares_fit_a_whole_body_ct():
    """With the defaults (12 GiB, 2 click + 1 segmentation workers) a 512×512×1000 CT is served: the app's
    segmentation of it, upload decoding included, is costed at 5.5–5.7 GiB, a one-shot click at 2.5 GiB."""
    assert request_limit(12 * 2**30, 2, 1, batch=True) == 6 * 2**30
    assert request_limit(12 * 2**30, 2, 1, batch=False) == 3 * 2**30


def test_pipeline_estimate_names_the_grid_that_does_not_fit():
    from monai import transforms as mt

    from server.budget import pipeline_bytes

    image = sitk.Image([16, 16, 16], sitk.sitkUInt8)
    image.SetSpacing((100.0, 100.0, 100.0))
    task = Pipeline(mt.Orientationd(keys="image", axcodes="RAS"), mt.Spacingd(keys="image", pixdim=3.0))
    nbytes, what = pipeline_bytes(task, ImageHeader.of(image), channels=2)
    assert what == "the model's 501×501×501 working grid" and nbytes > 501**3 * 53  # measured 53 B/voxel
    ledger = MemoryLedger(PER_REQUEST, plan=lambda header: pipeline_bytes(task, header, 2))
    with pytest.raises(PayloadTooLarge, match=f"limit is {PER_REQUEST / 2**20:.0f} MiB per request"):
        ledger.charge_image(ImageHeader.of(image))
    assert ledger.used == 16**3  # the image itself was counted; the grid never was


def test_params_module_in_process():
    """The checks themselves, without a server: every refusal is a BadRequest, every good value passes."""
    from flask import Flask

    from server import params

    assert params.json_depth('{"a": [[1, 2, 3]], "s": "[[[[[["}') == 3  # brackets inside strings do not count
    assert params.parse_params('"{\\"points\\": [[1, 2, 3]]}"') == {"points": [[1, 2, 3]]}  # double-encoded
    for raw in ("[" * 11 + "]" * 11, '{"n": ' + "1" * 20 + "}", '{"n": -Infinity}', '{"n": 1e400}', "[]"):
        with pytest.raises(BadRequest):
            params.parse_params(raw)
    assert params.flag_value("Yes") is True and params.flag_value(0) is False
    for value in (2, "maybe", None, [True], 1.0):
        with pytest.raises(BadRequest):
            params.flag_value(value, "f")
    assert params.number_value("2.5", "x", minimum=0) == 2.5
    for value in ("nan", float("inf"), True, "1e999", -1):
        with pytest.raises(BadRequest):
            params.number_value(value, "x", minimum=0)
    with Flask(__name__).test_request_context("/?lines=1e20&expiry=nan&n=12"):
        with pytest.raises(BadRequest, match="whole number from 1 to 1000"):
            params.query_int("lines", 100, minimum=1, maximum=1000)
        with pytest.raises(BadRequest, match="finite"):
            params.query_number("expiry", minimum=0)
        assert params.query_int("n", 0, minimum=0, maximum=20) == 12
        assert params.query_int("absent", 7, minimum=0, maximum=9) == 7
