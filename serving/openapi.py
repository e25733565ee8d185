"""What a task's /openapi.json says: the body its model reads (its modality's codec's part) and every answer."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from modelyard.modalities import Codec

ERROR_BODY = {"application/json": {"schema": {
    "type": "object", "required": ["error", "detail"],
    "properties": {"error": {"type": "string", "description": "a stable code, e.g. not_an_image"},
                   "detail": {"type": "string", "description": "what was wrong, for a person"}}}}}
AUTH_ERROR = {401: {"description": "no or wrong bearer token (only when the server has one)", "content": ERROR_BODY}}
PREDICT_ERRORS = {
    400: {"description": "unreadable body: empty file, broken form, invalid JSON or UTF-8", "content": ERROR_BODY},
    408: {"description": "the body did not arrive in time (a client sending too slowly)", "content": ERROR_BODY},
    413: {"description": "body, file, text or series over the limits in the summary", "content": ERROR_BODY},
    415: {"description": "wrong content type, or a file that is not an image", "content": ERROR_BODY},
    422: {"description": "well-formed but unusable: a missing field, wrong types or shapes, a value out of range, "
                         "a blank text, a tiny image", "content": ERROR_BODY},
    503: {"description": "the model is still loading", "content": ERROR_BODY},
    **AUTH_ERROR,
}


def document(app: FastAPI, codec: Codec, secured: bool) -> None:
    """Make this replica's /openapi.json describe the body its model reads and its limits.

    Every task runs the same ingress, and each replica holds its own copy of the FastAPI app (Serve freezes
    one per deployment), so the schema is replaced here once the replica knows its model's codec.
    """
    from fastapi.openapi.utils import get_openapi

    schema: dict[str, Any] = get_openapi(title=app.title, version=app.version,
                                         description=f"{app.description} {codec.summary()}", routes=app.routes)
    schema["paths"]["/predict"]["post"]["requestBody"] = codec.request_body()
    if secured:
        schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
        schema["paths"]["/health"]["get"]["security"] = []
    app.openapi = lambda: schema  # FastAPI's documented way to extend its schema
