"""Polygon editing: `/v1/mask2polygon` (mask → per-slice contours) and `/v1/fixpolygon` (drag a vertex).

Neither needs a model. Vertices are `[i, j]` voxel indices of the file; slices are the k axis. Besides the
contract's snake_case names, fixpolygon accepts the camelCase names and `prev_poly` that the C++ client
and older Python clients send.
"""

from __future__ import annotations

import json

import numpy as np
from flask import Blueprint, jsonify, request

from .. import polygons
from ..errors import BadRequest
from ..imageio import to_array
from ..openapi import BINARY, PARAMS_FIELD, RESULT_REPLY, document, form_body, json_reply
from ..replies import mask_reply
from ..uploads import request_image, request_params

bp = Blueprint("polygons", __name__)

COORDINATE_LIMIT = 1e6
"""Largest |coordinate| or |offset| accepted, in voxels: far beyond any image, small enough for exact sums."""

ALIASES = {
    "poly": "prev_poly",
    "vertex_offset": "vertexOffset",
    "slice_index": "sliceIndex",
    "polygon_index": "polygonIndex",
    "vertex_index": "vertexIndex",
}


@bp.post("/v1/mask2polygon")
@document(
    body=form_body({"params": PARAMS_FIELD, "datapoint": {**BINARY, "description": "Binary 3D mask"}}),
    reply=json_reply("Per slice k, its polygons, each a list of [i, j] vertices.", {"type": "array"}),
    errors=(400, 413, 415),
)
def mask2polygon():
    """Contours of each axial slice of a binary mask (params {"more_points": N})."""
    params = request_params()
    more_points = whole_number(params, "more_points", default=1, minimum=1)
    mask = request_image()
    size = "×".join(str(s) for s in mask.GetSize())
    if mask.GetDimension() != 3:
        raise BadRequest(f"The mask must be a 3D volume; the uploaded image is {mask.GetDimension()}D ({size}).")
    if mask.GetNumberOfComponentsPerPixel() != 1:
        raise BadRequest(
            f"The mask must be a single-channel label volume; the uploaded image has "
            f"{mask.GetNumberOfComponentsPerPixel()} channels per voxel."
        )
    slices = polygons.mask_to_polygons(to_array(mask), more_points)
    return jsonify([[polygon.tolist() for polygon in polygons_k] for polygons_k in slices])


@bp.post("/v1/fixpolygon")
@document(
    body=form_body({"params": PARAMS_FIELD, "datapoint": {**BINARY, "description": "The image the polygons are on"}}),
    reply=RESULT_REPLY,
    errors=(400, 413, 415),
)
def fixpolygon():
    """Move one polygon vertex (and its neighbours) and return the polygons and their mask."""
    params = request_params()
    dimension = whole_number(params, "dimension", default=2)
    if dimension not in (2, 3):
        raise BadRequest(f"'dimension' must be 2 (one slice) or 3 (all slices); got {dimension}.")
    polygon_index = whole_number(params, "polygon_index")
    vertex_index = whole_number(params, "vertex_index")
    neighbours = whole_number(params, "propagate_neighbor", default=0)
    offset = vertex_offset(params)
    image = request_image()
    if image.GetDimension() not in (2, 3) or image.GetDimension() < dimension:
        size = "×".join(str(s) for s in image.GetSize())
        raise BadRequest(
            f"fixpolygon with dimension {dimension} needs a {'3D volume' if dimension == 3 else '2D or 3D image'}; "
            f"the uploaded image is {image.GetDimension()}D ({size})."
        )
    size = (*image.GetSize(), 1)[:3]  # a 2D image is one slice
    poly = param(params, "poly")
    if poly is None:
        raise BadRequest(
            "'poly' is missing: send the polygons from /v1/mask2polygon (a list of polygons for dimension 2, "
            "a list of them per slice for dimension 3)."
        )

    if dimension == 3:
        slices = parse_slices(poly, size[2])
        slice_index = whole_number(params, "slice_index")
        if slice_index >= len(slices):
            raise BadRequest(
                f"'slice_index' {slice_index} is out of range: 'poly' has {len(slices)} slices "
                f"(valid 0..{len(slices) - 1})."
            )
        check_vertex(slices[slice_index], polygon_index, vertex_index, f"slice {slice_index}")
        neighbour_slices = whole_number(params, "propagate_neighbor_3d", default=0)
        slices = polygons.fix_polygon_3d(
            slices, slice_index, polygon_index, vertex_index, offset, neighbours, neighbour_slices
        )
        reply_poly = [[polygon.tolist() for polygon in polygons_k] for polygons_k in slices]
    else:
        slice_polygons = parse_polygons(poly, "'poly'")
        slice_index = whole_number(params, "slice_index", default=0)
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

    mask = polygons.polygons_to_mask(slices, size).reshape(image.GetSize())
    return mask_reply(mask, image, {"poly": reply_poly}, params, request.args.get("output"))


def param(params: dict, name: str):
    """`params[name]` or its client alias; JSON-encoded strings (older clients double-encode) are decoded."""
    value = params.get(name)
    if value is None and name in ALIASES:
        value = params.get(ALIASES[name])
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def whole_number(params: dict, name: str, *, default: int | None = None, minimum: int = 0) -> int:
    """A whole-number parameter ≥ `minimum`; missing without a default, fractional or text → 400."""
    value = param(params, name)
    if value is None:
        if default is None:
            raise BadRequest(f"'{name}' is missing; send it as a whole number.")
        return default
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise BadRequest(f"'{name}' must be a whole number ≥ {minimum}; got {json.dumps(value)}.")
    return value


def vertex_offset(params: dict) -> tuple[float, float]:
    """`vertex_offset` as two finite numbers [di, dj] in voxels."""
    value = param(params, "vertex_offset")
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and abs(v) <= COORDINATE_LIMIT for v in value)
    ):
        raise BadRequest(
            f"'vertex_offset' must be two numbers [dx, dy] in voxels (within ±{COORDINATE_LIMIT:.0f}); "
            f"got {json.dumps(value)}."
        )
    return float(value[0]), float(value[1])


def parse_polygons(value, where: str) -> list[polygons.Polygon]:
    """One slice's polygons: a list of polygons, each a list of [x, y] vertices."""
    if not isinstance(value, list):
        raise BadRequest(f"{where} must be a list of polygons, each a list of [x, y] vertices.")
    parsed = []
    for index, polygon in enumerate(value):
        try:
            vertices = np.asarray(polygon, dtype=float)
        except (TypeError, ValueError):
            vertices = None
        if vertices is not None and vertices.size == 0:
            vertices = vertices.reshape(0, 2)
        if (
            vertices is None
            or vertices.ndim != 2
            or vertices.shape[1] != 2
            or not (np.abs(vertices) <= COORDINATE_LIMIT).all()  # also refuses NaN and null
        ):
            raise BadRequest(
                f"Polygon {index} of {where} is not a list of [x, y] vertices (numbers within ±{COORDINATE_LIMIT:.0f})."
            )
        parsed.append(vertices)
    return parsed


def parse_slices(value, slice_count: int) -> list[list[polygons.Polygon]]:
    """All slices' polygons for dimension 3: a list (at most one entry per image slice) of polygon lists."""
    if not isinstance(value, list):
        raise BadRequest("'poly' must be a list with one entry per slice, each a list of polygons, for dimension 3.")
    if len(value) > slice_count:
        raise BadRequest(f"'poly' has {len(value)} slices but the image has only {slice_count}.")
    return [parse_polygons(polygons_k, f"slice {k} of 'poly'") for k, polygons_k in enumerate(value)]


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
