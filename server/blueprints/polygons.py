"""Polygon editing: `/v1/mask2polygon` (mask → per-slice contours) and `/v1/fixpolygon` (drag a vertex).

Neither needs a model. Vertices are `[row, column]` of an axial slice, `[j, i]` in ITK index terms (the
original AIAA server's order, which MITK's SmartPoly tool relies on); `vertex_offset` is added in the same
order; slices are the k axis. Besides the contract's snake_case names, fixpolygon accepts the camelCase
names and `prev_poly` that the C++ client and older Python clients send. A 2D image (the C++ client posts
a PNG slice) gets its mask back as a PNG unless `result_extension` asks for another 2D-capable format.

Both run in the scheduler's interactive lane, like a click: a running segmentation yields to them, and a
flood of them gets 503 + Retry-After instead of memory. Every parameter is checked (types, finite
numbers, ranges, list sizes) and the work is bounded before anything is allocated (`server.polygons`).
"""

from __future__ import annotations

import json
import math

import numpy as np
import SimpleITK as sitk
from flask import Blueprint, Response, current_app, request

from .. import polygons
from ..errors import BadRequest, PayloadTooLarge
from ..imageio import MASK_EXTENSIONS
from ..openapi import BINARY, OUTPUT, PARAMS_FIELD, RESULT_REPLY, SESSION_ID, document, form_body, json_reply
from ..png import PNG_EXTENSION, encode_png_mask
from ..replies import flag, mask_reply, result_reply
from ..scheduler import Scheduler
from ..uploads import request_image, request_params

bp = Blueprint("polygons", __name__)

EDIT_LANE = "annotation"
"""The model type whose scheduler lane polygon edits share: the interactive one, with clicks."""

COORDINATE_LIMIT = 1e6
"""Largest |coordinate| or |offset| accepted, in voxels: far beyond any image, small enough for exact sums."""

INDEX_LIMIT = polygons.MAX_VERTICES
"""Largest index or count parameter accepted (then checked against the actual polygons and image)."""

MAX_PARAM_STRING = 64
"""Longest writer option string (`result_extension`, `result_dtype`, `result_compress`)."""

ALIASES = {
    "poly": "prev_poly",
    "vertex_offset": "vertexOffset",
    "slice_index": "sliceIndex",
    "polygon_index": "polygonIndex",
    "vertex_index": "vertexIndex",
}


def scheduler() -> Scheduler:
    return current_app.extensions["aiaa.scheduler"]


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
    mask = request_image()
    size = "×".join(str(s) for s in mask.GetSize())
    if mask.GetDimension() != 3:
        raise BadRequest(f"The mask must be a 3D volume; the uploaded image is {mask.GetDimension()}D ({size}).")
    if mask.GetNumberOfComponentsPerPixel() != 1:
        raise BadRequest(
            f"The mask must be a single-channel label volume; the uploaded image has "
            f"{mask.GetNumberOfComponentsPerPixel()} channels per voxel."
        )
    with scheduler().run(EDIT_LANE):
        # A view of ITK's buffer ([k, j, i] → [i, j, k]), not `to_array`'s copy: the mask may be 10⁸ voxels.
        slices = polygons.mask_to_polygons(sitk.GetArrayViewFromImage(mask).T, more_points)
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
    dimension = whole_number(params, "dimension", default=2)
    if dimension not in (2, 3):
        raise BadRequest(f"'dimension' must be 2 (one slice) or 3 (all slices); got {dimension}.")
    polygon_index = whole_number(params, "polygon_index")
    vertex_index = whole_number(params, "vertex_index")
    neighbours = whole_number(params, "propagate_neighbor", default=0)
    offset = vertex_offset(params)
    poly = param(params, "poly")
    if poly is None:
        raise BadRequest(
            "'poly' is missing: send the polygons from /v1/mask2polygon (a list of polygons for dimension 2, "
            "a list of them per slice for dimension 3)."
        )
    image = request_image()
    if image.GetDimension() not in (2, 3) or image.GetDimension() < dimension:
        size = "×".join(str(s) for s in image.GetSize())
        raise BadRequest(
            f"fixpolygon with dimension {dimension} needs a {'3D volume' if dimension == 3 else '2D or 3D image'}; "
            f"the uploaded image is {image.GetDimension()}D ({size})."
        )
    extension, dtype, compress = writer_options(params, image.GetDimension())
    size = (*image.GetSize(), 1)[:3]  # a 2D image is one slice
    budget = VertexBudget()

    if dimension == 3:
        slices = parse_slices(poly, size[2], budget)
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
        slice_polygons = parse_polygons(poly, "'poly'", budget)
        slice_index = whole_number(params, "slice_index", default=0)
        if slice_index >= size[2]:
            raise BadRequest(
                f"'slice_index' {slice_index} is out of range: the image has {size[2]} slices (valid 0..{size[2] - 1})."
            )
        check_vertex(slice_polygons, polygon_index, vertex_index, "'poly'")
        slice_polygons = polygons.fix_polygon(slice_polygons, polygon_index, vertex_index, offset, neighbours)
        slices = [[] for _ in range(size[2])]
        slices[slice_index] = slice_polygons
        reply_poly = [polygon.tolist() for polygon in slice_polygons]
    polygons.check_fill_work(slices, rows=size[1])  # rows of a [j, i] slice are j
    check_raster(size)

    result = {"poly": reply_poly}
    with scheduler().run(EDIT_LANE):
        mask = polygons.polygons_to_mask(slices, size).reshape(image.GetSize(), order="F")
        if extension == PNG_EXTENSION:
            return result_reply(result, encode_png_mask(mask, image, dtype), "result.png", request.args.get("output"))
        options = {"result_extension": extension, "result_dtype": dtype, "result_compress": compress}
        return mask_reply(mask, image, result, options, request.args.get("output"))


def polygons_json(slice_polygons: list[polygons.Polygon]) -> str:
    """One slice's polygons as JSON text, polygon by polygon: no Python list of every vertex at once."""
    return "[" + ",".join(json.dumps(polygon.tolist()) for polygon in slice_polygons) + "]"


def check_raster(size: tuple[int, ...]) -> None:
    """413 before allocating a mask bigger than the server's image limit (one byte per voxel)."""
    limit = current_app.config["SETTINGS"].max_image_voxels
    voxels = math.prod(size)
    if voxels > limit:
        dims = "×".join(str(s) for s in size)
        raise PayloadTooLarge(f"The mask would have {dims} = {voxels} voxels; the limit is {limit} voxels.")


def writer_options(params: dict, image_dimension: int) -> tuple[str, str, object]:
    """`result_extension` (a 2D image defaults to PNG, a 3D one to NIfTI), `result_dtype`, `result_compress`."""
    default = PNG_EXTENSION if image_dimension == 2 else ".nii.gz"
    extension = params.get("result_extension") or default
    if not isinstance(extension, str) or len(extension) > MAX_PARAM_STRING:
        raise BadRequest(f"'result_extension' must be a file extension such as \".nii.gz\"; got {describe(extension)}.")
    extension = extension.strip().lower()
    extension = extension if extension.startswith(".") else "." + extension
    allowed = (PNG_EXTENSION, *MASK_EXTENSIONS) if image_dimension == 2 else MASK_EXTENSIONS
    if extension not in allowed:
        why = " (a PNG holds one 2D slice; this image is 3D)" if extension == PNG_EXTENSION else ""
        raise BadRequest(f"Unsupported mask format {describe(extension)}{why}. Choose one of: {', '.join(allowed)}.")
    dtype = params.get("result_dtype") or "uint8"
    if not isinstance(dtype, str) or len(dtype) > MAX_PARAM_STRING:
        raise BadRequest(f"'result_dtype' must be an integer type name such as \"uint8\"; got {describe(dtype)}.")
    compress = params.get("result_compress", True)
    if not isinstance(compress, bool | int | str) or (isinstance(compress, str) and len(compress) > MAX_PARAM_STRING):
        raise BadRequest(f"'result_compress' must be true or false; got {describe(compress)}.")
    return extension, dtype, flag(compress)


def describe(value) -> str:
    """A short, always printable rendering of a client's value for an error message."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value) if abs(value) < 10**18 else "a number with more than 18 digits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value[:40] + ("…" if len(value) > 40 else ""), ensure_ascii=False)
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    return f"a JSON {type(value).__name__ if not isinstance(value, dict) else 'object'}"


def param(params: dict, name: str):
    """`params[name]` or its client alias; JSON-encoded strings (older clients double-encode) are decoded."""
    value = params.get(name)
    if value is None and name in ALIASES:
        value = params.get(ALIASES[name])
    if isinstance(value, str):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):  # not JSON, a 5000-digit number, or nested beyond reason
            return value
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
        raise BadRequest(f"'{name}' must be a whole number ≥ {minimum} and ≤ {maximum}; got {describe(value)}.")
    return value


def is_coordinate(value) -> bool:
    """A JSON number (not true/false) within ±COORDINATE_LIMIT; NaN and ±Infinity are not."""
    return isinstance(value, int | float) and not isinstance(value, bool) and abs(value) <= COORDINATE_LIMIT


def vertex_offset(params: dict) -> tuple[float, float]:
    """`vertex_offset` as two finite numbers [d_row, d_column] = [dj, di] in voxels, the vertices' order."""
    value = param(params, "vertex_offset")
    if not isinstance(value, list) or len(value) != 2 or not all(is_coordinate(v) for v in value):
        shown = describe(value) if not isinstance(value, list) or len(value) != 2 else ", ".join(map(describe, value))
        raise BadRequest(
            f"'vertex_offset' must be two numbers [d_row, d_column] (= [dj, di]) in voxels, within "
            f"±{COORDINATE_LIMIT:.0f}; got {shown}."
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


def parse_slices(value, slice_count: int, budget: VertexBudget) -> list[list[polygons.Polygon]]:
    """All slices' polygons for dimension 3: a list (at most one entry per image slice) of polygon lists."""
    if not isinstance(value, list):
        raise BadRequest("'poly' must be a list with one entry per slice, each a list of polygons, for dimension 3.")
    if len(value) > slice_count:
        raise BadRequest(f"'poly' has {len(value)} slices but the image has only {slice_count}.")
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
