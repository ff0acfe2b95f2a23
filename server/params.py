"""Every value a client sends in `params` or the query string, checked in one place.

Anything the network sends is hostile until checked here: JSON is parsed with bounded size and nesting,
integers within int64, no NaN or infinity; each parameter is read with the type it must have (a string
where a string is expected, a finite number within bounds, a bounded list of points). Every refusal is a
400 with a message that names the parameter and says what is allowed, never a 500 from deep inside.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Sequence

from flask import request

from .errors import BadRequest
from .points import parse_points

MAX_PARAMS_BYTES = 4 * 1024**2
"""Largest `params` field (and any other form field): a few hundred points are a few KB, but a 3D
fix-polygon request carries the polygons of every slice of an organ (a phantom spleen: 134 KB; a liver
several times that). Parsing 4 MiB of JSON costs tens of milliseconds."""

MAX_JSON_DEPTH = 10
"""Deepest nesting of arrays and objects in `params` (points are 3 deep; Python recursion is not a limit)."""

MAX_INT_DIGITS = 19
"""Integers with more digits cannot be int64 (and Python would spend quadratic time converting them)."""

MAX_POINTS = 500
"""Most points in one list (clicks or extreme points): each costs work in the model's point heatmaps."""

MAX_STRING = 256
"""Longest string accepted for a parameter that names something (an extension, a type, a model)."""

INT64 = (-(2**63), 2**63 - 1)

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def describe(value: object) -> str:
    """A short, safe rendering of a client's value for an error message."""
    text = json.dumps(value) if isinstance(value, str) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + '..."'


# ---------------------------------------------------------------------------------------------- JSON


def json_depth(text: str) -> int:
    """Deepest nesting of arrays and objects in JSON text, counted without parsing it."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    steps = (1 if ch in "[{" else -1 for ch in brackets)
    return max(itertools.accumulate(steps, initial=0))


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS or not INT64[0] <= (value := int(text)) <= INT64[1]:
        raise BadRequest(f"'params' holds the integer {text[:20]}{'...' if len(text) > 20 else ''}, beyond 64 bits.")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRequest(f"'params' holds the number {text[:20]}, which is not finite.")
    return value


def _no_constant(name: str):
    raise BadRequest(f"'params' holds {name}; only finite numbers are accepted.")


def load_json(text: str, what: str = "params") -> object:
    """JSON text as Python values, refusing what no client sends: oversize, deep nesting, huge or non-finite
    numbers. Raises `BadRequest` naming `what`."""
    if len(text) > MAX_PARAMS_BYTES:
        raise BadRequest(f"The '{what}' field is {len(text)} bytes long; the limit is {MAX_PARAMS_BYTES} bytes.")
    if (depth := json_depth(text)) > MAX_JSON_DEPTH:
        raise BadRequest(f"The '{what}' field is nested {depth} levels deep; the limit is {MAX_JSON_DEPTH}.")
    try:
        return json.loads(text, parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"The '{what}' field is not valid JSON ({exc.msg} at position {exc.pos}).") from None
    except (RecursionError, ValueError):  # defensive: the depth check above should make these impossible
        raise BadRequest(f"The '{what}' field is not valid JSON.") from None


def parse_params(raw: str | None) -> dict:
    """The `params` form field as a dict: absent or blank → {}; double-encoded (older clients) → decoded."""
    if raw is None or raw.strip() == "":
        return {}
    params = load_json(raw)
    if isinstance(params, str):
        try:
            params = load_json(params)
        except BadRequest:
            pass
    if not isinstance(params, dict):
        raise BadRequest("The 'params' field must be a JSON object, e.g. {} or {\"points\": [[x, y, z], ...]}.")
    return params


# ------------------------------------------------------------------------------------ param values


def text(params: dict, key: str, default: str, *, choices: Sequence[str] | None = None) -> str:
    """A string parameter (absent, null or "" → `default`), at most `MAX_STRING` characters, one of `choices`."""
    value = params.get(key)
    if value is None or value == "":
        return default
    if not isinstance(value, str) or len(value) > MAX_STRING:
        raise BadRequest(f"'{key}' must be a string of at most {MAX_STRING} characters; got {describe(value)}.")
    if choices is not None and value not in choices:
        raise BadRequest(f"'{key}' must be one of {', '.join(choices)}; got {describe(value)}.")
    return value


def flag_value(value: object, key: str = "flag") -> bool:
    """A boolean as clients send it: true/false, 1/0, or the strings "true"/"false"/"yes"/"no"/"1"/"0"."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and len(value) <= MAX_STRING:
        word = value.strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
    raise BadRequest(f"'{key}' must be true or false; got {describe(value)}.")


def flag(params: dict, key: str, default: bool) -> bool:
    value = params.get(key)
    return default if value is None else flag_value(value, key)


def number_value(value: object, key: str, *, minimum: float | None = None, maximum: float | None = None) -> float:
    """A finite number (a JSON number or its text) within [minimum, maximum]."""
    if isinstance(value, str) and len(value) <= 64:
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"'{key}' must be a number; got {describe(value)}.")
    if not math.isfinite(value):
        raise BadRequest(f"'{key}' must be a finite number; got {value}.")
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        low = "" if minimum is None else f" ≥ {minimum:g}"
        high = "" if maximum is None else f" ≤ {maximum:g}"
        joined = " and".join(part for part in (low, high) if part)
        raise BadRequest(f"'{key}' must be{joined}; got {value:g}.")
    return float(value)


def points(params: dict, key: str, size: Sequence[int], *, min_count: int = 0) -> list[list[int]]:
    """`params[key]` as at most `MAX_POINTS` in-image [i, j, k] points (at least `min_count`)."""
    value = params.get(key)
    if isinstance(value, str):  # older clients send the list as JSON text
        try:
            value = load_json(value, key) if value.strip() else []
        except BadRequest as exc:
            raise BadRequest(f"'{key}' is not a valid point list; send [[x, y, z], ...]. {exc.message}") from None
    if value is not None and not isinstance(value, list):
        raise BadRequest(f"'{key}' must be a list of [x, y, z] points, e.g. [[10, 20, 30]]; got {describe(value)}.")
    parsed = parse_points({key: value}, key, size, min_count=min_count)  # bounded: `params` is bounded
    if len(parsed) > MAX_POINTS:
        raise BadRequest(f"'{key}' holds {len(parsed)} points; the limit is {MAX_POINTS}.")
    return parsed


# ------------------------------------------------------------------------------------- query values


def query_text(name: str, default: str | None = None, *, choices: Sequence[str] | None = None) -> str | None:
    """A query parameter as a string of at most `MAX_STRING` characters (one of `choices` when given)."""
    value = request.args.get(name)
    if value is None or value == "":
        return default
    if len(value) > MAX_STRING:
        raise BadRequest(f"The query parameter '{name}' is {len(value)} characters long; the limit is {MAX_STRING}.")
    if choices is not None and value not in choices:
        raise BadRequest(f"The query parameter '{name}' must be one of {', '.join(choices)}; got {describe(value)}.")
    return value


def query_number(name: str, *, minimum: float | None = None, maximum: float | None = None) -> float | None:
    """A finite number from the query string, or None when absent or empty."""
    value = query_text(name)
    return None if value is None else number_value(value, name, minimum=minimum, maximum=maximum)


def query_int(name: str, default: int, *, minimum: int, maximum: int) -> int:
    """A whole number from the query string within [minimum, maximum] (e.g. `/logs?lines=`), else a 400."""
    value = query_text(name)
    if value is None:
        return default
    if not re.fullmatch(r"[+-]?\d{1,19}", value.strip()) or not minimum <= int(value) <= maximum:
        raise BadRequest(
            f"The query parameter '{name}' must be a whole number from {minimum} to {maximum}; got {describe(value)}."
        )
    return int(value)


def query_flag(name: str, default: bool = False) -> bool:
    value = query_text(name)
    return default if value is None else flag_value(value, name)
