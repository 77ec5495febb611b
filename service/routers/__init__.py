"""The HTTP routes, one module per resource."""

from __future__ import annotations

from refrain.service.schemas import ErrorBody

__all__ = ["error_responses", "multipart_body"]

_DESCRIPTIONS = {
    400: "Bad request: a body that is not valid JSON or multipart, an empty upload, a missing file part",
    401: "Missing, unknown or revoked API key",
    403: "The key's role may not do this",
    404: "Unknown id",
    409: "Conflict with the current state",
    413: "Upload over the size or duration limit (refused while streaming)",
    415: "Not multipart/form-data, or a file the decoder cannot read as audio (message: the decoder's reason)",
    408: "The request body stalled or took too long (see the body timeouts in docs/service.md); "
         "the connection is closed",
    422: "Invalid parameters, or audio that decodes but holds nothing to fingerprint",
    503: "Busy: too many uploads in flight, the audio analysis budget is spent, the database is locked by "
         "another process, or (code `index_busy`) another process has been writing to the index past the "
         "write deadline. Nothing was changed; retry after `Retry-After` seconds",
}


def error_responses(*statuses: int) -> dict:
    """OpenAPI ``responses`` entries for these error statuses (401, 403, 422 and 503 are always added)."""
    return {status: {"model": ErrorBody, "description": _DESCRIPTIONS[status],
                     **({"headers": {"Retry-After": {"description": "Seconds to wait before retrying",
                                                     "schema": {"type": "integer"}}}} if status == 503 else {})}
            for status in sorted({401, 403, 422, 503, *statuses})}


def multipart_body(schema_name: str) -> dict:
    """``openapi_extra`` documenting a streamed multipart body (see :mod:`service.uploads`)."""
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"$ref": f"#/components/schemas/{schema_name}"}}}}}
