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
from .mask_writing import WriterOptions, encode_mask, writer_options

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


def mask_reply(mask, reference, result: dict, writer: WriterOptions | dict, output: str | None = None) -> Response:
    """Encode the mask on the reference grid with the writer options (checked ones, or the request's params
    to check), then reply."""
    if not isinstance(writer, WriterOptions):
        writer = writer_options(writer)
    started = time.perf_counter()
    mask_bytes = encode_mask(mask, reference, extension=writer.extension, dtype=writer.dtype, compress=writer.compress)
    if isinstance(result.get("latencies"), dict):
        result["latencies"]["encode"] = round(time.perf_counter() - started, 4)
    return result_reply(result, mask_bytes, f"result{writer.extension}", output)
