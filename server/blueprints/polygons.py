"""Polygon editing: `/v1/mask2polygon` (mask → per-slice contours) and `/v1/fixpolygon` (drag a vertex).

Neither needs a model. Vertices are `[row, column]` of an axial slice, `[j, i]` in ITK index terms (the
original AIAA server's order, which MITK's SmartPoly tool relies on); `vertex_offset` is added in the same
order; slices are the k axis. Besides the contract's snake_case names, fixpolygon accepts the camelCase
names and `prev_poly` that the C++ client and older Python clients send. A 2D image (the C++ client posts
a PNG slice) gets its mask back as a PNG unless `result_extension` asks for another format.

Like inference, every parameter is checked before any work (`server.params`, and here the polygons:
plain finite numbers, bounded counts), then the upload is decoded and the work done in the scheduler's
interactive lane, like a click: a running segmentation yields to them, a flood of them gets 503 +
Retry-After. What they will allocate (the decoded image, the mask, tracing) is charged to the request's
memory ledger first (`server.budget`, 413), and the work is bounded before it starts (`server.polygons`).
"""

from __future__ import annotations

import json
import math

import numpy as np
import SimpleITK as sitk
from flask import Blueprint, Response

from aiaa_core.vocabularies import ModelType

from .. import params as checked
from .. import polygons
from ..budget import MASK_BYTES_PER_VOXEL, MemoryLedger
from ..errors import BadRequest, PayloadTooLarge
from ..mask_writing import writer_options
from ..openapi import BINARY, OUTPUT, PARAMS_FIELD, RESULT_REPLY, SESSION_ID, document, form_body, json_reply
from ..replies import mask_reply, output_mode
from ..uploads import request_image, request_ledger, request_params
from . import scheduler

bp = Blueprint("polygons", __name__)

EDIT_LANE = ModelType.ANNOTATION
"""The model type whose scheduler lane polygon edits share: the interactive one, with clicks."""

COORDINATE_LIMIT = 1e6
"""Largest |coordinate| or |offset| accepted, in voxels: far beyond any image, small enough for exact sums."""

INDEX_LIMIT = polygons.MAX_VERTICES
"""Largest index or count parameter accepted (then checked against the actual polygons and image)."""

ALIASES = {
    "poly": "prev_poly",
    "vertex_offset": "vertexOffset",
    "slice_index": "sliceIndex",
    "polygon_index": "polygonIndex",
    "vertex_index": "vertexIndex",
}


@bp.post("/v1/mask2polygon")
@document(
    query=[SESSION_ID],
    body=form_body({"params": PARAMS_FIELD, "datapoint": {**BINARY, "description": "Binary 3D mask"}}),
    reply=json_reply(
        "Per axial slice k, its polygons, each a list of [row, column] vertices of the slice, i.e. [j, i] "
        "in ITK index terms (the original AIAA server's order).",
        {"type": "array", "items": {"type": "array"}},
    ),
    errors=(400, 413, 415, 440, 503),
)
def mask2polygon():
    """Contours of each axial slice of a binary mask as [j, i] vertices (params {"more_points": N})."""
    params = request_params()
    more_points = whole_number(params, "more_points", default=1, minimum=1)
    with scheduler().run(EDIT_LANE):
        ledger = request_ledger()
        mask = request_image(ledger)
        size = "×".join(str(s) for s in mask.GetSize())
        if mask.GetDimension() != 3:
            raise BadRequest(f"The mask must be a 3D volume; the uploaded image is {mask.GetDimension()}D ({size}).")
        if mask.GetNumberOfComponentsPerPixel() != 1:
            raise BadRequest(
                f"The mask must be a single-channel label volume; the uploaded image has "
                f"{mask.GetNumberOfComponentsPerPixel()} channels per voxel."
            )
        # A view of ITK's buffer ([k, j, i] → [i, j, k]), not `to_array`'s copy: the mask may be 10⁸ voxels.
        voxels = sitk.GetArrayViewFromImage(mask).T
        plan = polygons.plan_tracing(voxels)
        ledger.charge(plan.nbytes, f"tracing the {plan.vertices} contour vertices of the {size} mask")
        slices = polygons.mask_to_polygons(voxels, more_points)
        body = "[" + ",".join(polygons_json(slice_polygons) for slice_polygons in slices) + "]"
    return Response(body, mimetype="application/json")


@bp.post("/v1/fixpolygon")
@document(
    query=[SESSION_ID, OUTPUT],
    body=form_body(
        {
            "params": {
                **PARAMS_FIELD,
                "description": "JSON object: 'poly' ([row, column] = [j, i] vertices, from /v1/mask2polygon), "
                "'vertex_offset' [d_row, d_column] in the same order, 'dimension' 2|3, 'polygon_index', "
                "'vertex_index', 'propagate_neighbor', 'slice_index', 'propagate_neighbor_3d'",
            },
            "datapoint": {**BINARY, "description": "The image the polygons are on (3D volume, or a 2D PNG slice)"},
        }
    ),
    reply={
        **RESULT_REPLY,
        "description": RESULT_REPLY["description"] + " A 2D image's mask is a PNG of the same size by default.",
    },
    errors=(400, 413, 415, 440, 503),
)
def fixpolygon():
    """Move one polygon vertex (and its neighbours) and return the polygons and their mask."""
    params = request_params()
    output = output_mode(checked.query_text("output"))
    dimension = whole_number(params, "dimension", default=2)
    if dimension not in (2, 3):
        raise BadRequest(f"'dimension' must be 2 (one slice) or 3 (all slices); got {dimension}.")
    polygon_index = whole_number(params, "polygon_index")
    vertex_index = whole_number(params, "vertex_index")
    neighbours = whole_number(params, "propagate_neighbor", default=0)
    neighbour_slices = whole_number(params, "propagate_neighbor_3d", default=0)
    slice_index = whole_number(params, "slice_index", default=None if dimension == 3 else 0)
    offset = vertex_offset(params)
    poly = param(params, "poly")
    if poly is None:
        raise BadRequest(
            "'poly' is missing: send the polygons from /v1/mask2polygon (a list of polygons for dimension 2, "
            "a list of them per slice for dimension 3)."
        )
    budget = VertexBudget()
    if dimension == 3:
        slices = parse_slices(poly, budget)
    else:
        slice_polygons = parse_polygons(poly, "'poly'", budget)
    writer = writer_options(params, png_for_2d=True)  # the default format waits for the image

    with scheduler().run(EDIT_LANE):
        ledger = request_ledger()
        image = request_image(ledger)
        if image.GetDimension() not in (2, 3) or image.GetDimension() < dimension:
            size = "×".join(str(s) for s in image.GetSize())
            raise BadRequest(
                f"fixpolygon with dimension {dimension} needs a "
                f"{'3D volume' if dimension == 3 else '2D or 3D image'}; the uploaded image is "
                f"{image.GetDimension()}D ({size})."
            )
        writer = writer.for_image(image.GetDimension())
        size = (*image.GetSize(), 1)[:3]  # a 2D image is one slice
        if dimension == 3:
            if len(slices) > size[2]:
                raise BadRequest(f"'poly' has {len(slices)} slices but the image has only {size[2]}.")
            if slice_index >= len(slices):
                raise BadRequest(
                    f"'slice_index' {slice_index} is out of range: 'poly' has {len(slices)} slices "
                    f"(valid 0..{len(slices) - 1})."
                )
            check_vertex(slices[slice_index], polygon_index, vertex_index, f"slice {slice_index}")
            slices = polygons.fix_polygon_3d(
                slices, slice_index, polygon_index, vertex_index, offset, neighbours, neighbour_slices
            )
            reply_poly = [[polygon.tolist() for polygon in polygons_k] for polygons_k in slices]
        else:
            if slice_index >= size[2]:
                raise BadRequest(
                    f"'slice_index' {slice_index} is out of range: the image has {size[2]} slices "
                    f"(valid 0..{size[2] - 1})."
                )
            check_vertex(slice_polygons, polygon_index, vertex_index, "'poly'")
            slice_polygons = polygons.fix_polygon(slice_polygons, polygon_index, vertex_index, offset, neighbours)
            slices = [[] for _ in range(size[2])]
            slices[slice_index] = slice_polygons
            reply_poly = [polygon.tolist() for polygon in slice_polygons]
        polygons.check_fill_work(slices, rows=size[1])  # rows of a [j, i] slice are j
        charge_mask(ledger, size)
        mask = polygons.polygons_to_mask(slices, size).reshape(image.GetSize(), order="F")
        return mask_reply(mask, image, {"poly": reply_poly}, writer, output)


def polygons_json(slice_polygons: list[polygons.Polygon]) -> str:
    """One slice's polygons as JSON text, polygon by polygon: no Python list of every vertex at once."""
    return "[" + ",".join(json.dumps(polygon.tolist()) for polygon in slice_polygons) + "]"


def charge_mask(ledger: MemoryLedger, size: tuple[int, int, int]) -> None:
    """Charge the mask and its encoded copy on the image's grid, and one slice of fill toggles (for a
    polygon over voxels already filled)."""
    nbytes = math.prod(size) * MASK_BYTES_PER_VOXEL + size[0] * size[1]
    ledger.charge(nbytes, f"the {'×'.join(str(n) for n in size)} mask")


def param(params: dict, name: str):
    """`params[name]` or its client alias; JSON text (older clients double-encode) is decoded, with the same
    bounds as `params` itself (size, depth, 64-bit integers, finite numbers); other text is kept as is."""
    value = params.get(name)
    if value is None and name in ALIASES:
        value = params.get(ALIASES[name])
    if isinstance(value, str):
        try:
            return checked.load_json(value, name)
        except BadRequest:
            return value  # not JSON: refused below by the parameter's own check, which says what to send
    return value


def whole_number(
    params: dict, name: str, *, default: int | None = None, minimum: int = 0, maximum: int = INDEX_LIMIT
) -> int:
    """A whole-number parameter in minimum..maximum; missing without a default, fractional or text → 400."""
    value = param(params, name)
    if value is None:
        if default is None:
            raise BadRequest(f"'{name}' is missing; send it as a whole number.")
        return default
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        shown = value if isinstance(value, int) and not isinstance(value, bool) else checked.describe(value)
        raise BadRequest(f"'{name}' must be a whole number ≥ {minimum} and ≤ {maximum}; got {shown}.")
    return value


def is_coordinate(value) -> bool:
    """A JSON number (not true/false) within ±COORDINATE_LIMIT; NaN and ±Infinity are not."""
    return isinstance(value, int | float) and not isinstance(value, bool) and abs(value) <= COORDINATE_LIMIT


def vertex_offset(params: dict) -> tuple[float, float]:
    """`vertex_offset` as two finite numbers [d_row, d_column] = [dj, di] in voxels, the vertices' order."""
    value = param(params, "vertex_offset")
    if not isinstance(value, list) or len(value) != 2 or not all(is_coordinate(v) for v in value):
        raise BadRequest(
            f"'vertex_offset' must be two numbers [d_row, d_column] (= [dj, di]) in voxels, within "
            f"±{COORDINATE_LIMIT:.0f}; got {checked.describe(value)}."
        )
    return float(value[0]), float(value[1])


class VertexBudget:
    """Counts the vertices (and polygons) of one request against `polygons.MAX_VERTICES`, before conversion."""

    def __init__(self, limit: int = polygons.MAX_VERTICES):
        self.limit, self.used = limit, 0

    def take(self, count: int) -> None:
        self.used += max(1, count)  # an empty polygon still costs a little
        if self.used > self.limit:
            raise PayloadTooLarge(
                f"'poly' has more than {self.limit} vertices, the limit per request; send one slice "
                "(dimension 2) or coarser contours (a larger more_points)."
            )


def parse_polygons(value, where: str, budget: VertexBudget) -> list[polygons.Polygon]:
    """One slice's polygons: a list of polygons, each a list of [row, column] vertices (plain numbers)."""
    if not isinstance(value, list):
        raise BadRequest(f"{where} must be a list of polygons, each a list of [row, column] vertices.")
    for polygon in value:
        budget.take(len(polygon) if isinstance(polygon, list) else 1)
    parsed = []
    for index, polygon in enumerate(value):
        if not isinstance(polygon, list) or not all(is_vertex(vertex) for vertex in polygon):
            raise BadRequest(
                f"Polygon {index} of {where} is not a list of [row, column] vertices "
                f"(numbers within ±{COORDINATE_LIMIT:.0f})."
            )
        parsed.append(np.array(polygon, dtype=float).reshape(len(polygon), 2))
    return parsed


def is_vertex(vertex) -> bool:
    """[row, column]: two plain numbers (no strings, true/false or null), finite and within range."""
    return isinstance(vertex, list) and len(vertex) == 2 and is_coordinate(vertex[0]) and is_coordinate(vertex[1])


def parse_slices(value, budget: VertexBudget) -> list[list[polygons.Polygon]]:
    """All slices' polygons for dimension 3: a list (one entry per image slice, at most) of polygon lists."""
    if not isinstance(value, list):
        raise BadRequest("'poly' must be a list with one entry per slice, each a list of polygons, for dimension 3.")
    return [parse_polygons(polygons_k, f"slice {k} of 'poly'", budget) for k, polygons_k in enumerate(value)]


def check_vertex(slice_polygons: list[polygons.Polygon], polygon_index: int, vertex_index: int, where: str) -> None:
    """`polygon_index` and `vertex_index` must name an existing vertex."""
    if polygon_index >= len(slice_polygons):
        valid = f"valid 0..{len(slice_polygons) - 1}" if slice_polygons else "it has none"
        raise BadRequest(
            f"'polygon_index' {polygon_index} is out of range: {where} has {len(slice_polygons)} polygons ({valid})."
        )
    count = len(slice_polygons[polygon_index])
    if vertex_index >= count:
        valid = f"valid 0..{count - 1}" if count else "it has none"
        raise BadRequest(
            f"'vertex_index' {vertex_index} is out of range: polygon {polygon_index} has {count} vertices ({valid})."
        )
