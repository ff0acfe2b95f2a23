"""Result replies as the AIAA clients parse them: multipart built whole, with Content-Length.

The Python client hands the raw socket to its multipart parser, so the body is never chunked and
never gzip-encoded; a `params` part without filename comes first, then the mask part.
"""

from __future__ import annotations

import json
import time

from flask import Response
from requests_toolbelt import MultipartEncoder

from . import params as checked
from .errors import BadRequest
from .mask_writing import MASK_EXTENSIONS, encode_mask

OUTPUTS = ("multipart", "image", "json")


def result_reply(params: dict, mask_bytes: bytes | None, filename: str, output: str | None = None) -> Response:
    """`output=image` → the bare file, `output=json` → the params only, otherwise the multipart."""
    output = output_mode(output)
    if output == "json":
        return Response(json.dumps(params), mimetype="application/json")
    if output == "image":
        if mask_bytes is None:
            raise BadRequest("This model returns no image; ask for output=json.")
        return Response(
            mask_bytes,
            mimetype="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    fields = {"params": (None, json.dumps(params), "application/json")}
    if mask_bytes is not None:
        fields["image"] = (filename, mask_bytes, "application/octet-stream")
    encoder = MultipartEncoder(fields=fields)
    body = encoder.to_string()
    return Response(body, content_type=encoder.content_type, headers={"Content-Length": str(len(body))})


def output_mode(output: str | None) -> str:
    """The `output` query value, checked (callers check it before any work)."""
    output = output or "multipart"
    if output not in OUTPUTS:
        raise BadRequest(
            f"Unknown output {checked.describe(output)}: use output=image or output=json (or leave it out)."
        )
    return output


def mask_options(params: dict) -> tuple[str, str, bool]:
    """The request's mask writer options, checked before any work: extension (with its dot, lower case),
    integer dtype name, compression."""
    extension = checked.text(params, "result_extension", ".nii.gz").strip().lower()
    extension = extension if extension.startswith(".") else "." + extension
    if extension not in MASK_EXTENSIONS:
        raise BadRequest(
            f"Unsupported mask format {checked.describe(extension)}. Choose one of: {', '.join(MASK_EXTENSIONS)}."
        )
    return extension, checked.text(params, "result_dtype", "uint8"), checked.flag(params, "result_compress", True)


def mask_reply(mask, reference, result: dict, params: dict, output: str | None = None) -> Response:
    """Encode the mask on the reference grid with the request's writer options, then reply."""
    extension, dtype, compress = mask_options(params)
    started = time.perf_counter()
    mask_bytes = encode_mask(mask, reference, extension=extension, dtype=dtype, compress=compress)
    if isinstance(result.get("latencies"), dict):
        result["latencies"]["encode"] = round(time.perf_counter() - started, 4)
    return result_reply(result, mask_bytes, f"result{extension}", output)
