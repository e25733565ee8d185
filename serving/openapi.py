"""What a task's /openapi.json says: the body its model reads (its modality's codec's part) and every answer."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from modelyard.modalities import Codec
from modelyard.monitoring.feedback import MAX_LABELS, REQUEST_ID_PATTERN

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
FEEDBACK_BODY_BYTES = 512 * 1024
FEEDBACK_ERRORS = {
    400: {"description": "the body is not JSON (or not UTF-8)", "content": ERROR_BODY},
    408: PREDICT_ERRORS[408],
    409: {"description": "this server keeps no traffic log (serve.traffic_log.enabled is off)", "content": ERROR_BODY},
    413: {"description": f"body over {FEEDBACK_BODY_BYTES // 1024} KiB", "content": ERROR_BODY},
    415: {"description": "not application/json", "content": ERROR_BODY},
    422: {"description": "a label that is not one of the model's classes, a malformed request id or item, or "
                         f"more than {MAX_LABELS} labels", "content": ERROR_BODY},
    503: PREDICT_ERRORS[503],
    **AUTH_ERROR,
}
ACCEPTED = {"application/json": {"schema": {
    "type": "object", "required": ["accepted", "task"],
    "properties": {"accepted": {"type": "integer", "description": "labels recorded"},
                   "task": {"type": "string"}}}}}


def feedback_body(labels: list[str], max_items: int, max_labels: int) -> dict[str, Any]:
    """POST /feedback's body: one label, or a list of them under `feedback`."""
    one = {"type": "object", "required": ["request_id", "label"], "additionalProperties": False, "properties": {
        "request_id": {"type": "string", "pattern": f"^{REQUEST_ID_PATTERN}$",
                       "description": "the X-Request-ID header of the answer"},
        "item": {"type": "integer", "minimum": 0, "maximum": max_items - 1, "default": 0,
                 "description": "the input's place in its request (texts and series may send several)"},
        "label": {"oneOf": [{"type": "string", "enum": list(labels)},
                            {"type": "integer", "minimum": 0, "maximum": len(labels) - 1}],
                  "description": "the true class, by name or number"}}}
    many = {"type": "object", "required": ["feedback"], "additionalProperties": False, "properties": {
        "feedback": {"type": "array", "items": one, "minItems": 1, "maxItems": max_labels}}}
    return {"required": True, "content": {"application/json": {"schema": {"oneOf": [one, many]}}}}


def document(app: FastAPI, codec: Codec, secured: bool, labels: list[str] | None = None, max_items: int = 64) -> None:
    """Make this replica's /openapi.json describe the body its model reads and its limits.

    Every task runs the same ingress, and each replica holds its own copy of the FastAPI app (Serve freezes
    one per deployment), so the schema is replaced here once the replica knows its model's codec.
    """
    from fastapi.openapi.utils import get_openapi

    schema: dict[str, Any] = get_openapi(title=app.title, version=app.version,
                                         description=f"{app.description} {codec.summary()}", routes=app.routes)
    schema["paths"]["/predict"]["post"]["requestBody"] = codec.request_body()
    if labels and "/feedback" in schema["paths"]:
        feedback = schema["paths"]["/feedback"]["post"]
        feedback["requestBody"] = feedback_body(labels, max_items, MAX_LABELS)
        feedback["responses"]["202"] = {"description": "recorded; joined with the traffic log when the feedback set is "
                                                       "built (an id it does not hold is left out then)",
                                        "content": ACCEPTED}
    if secured:
        schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
        schema["paths"]["/health"]["get"]["security"] = []
    app.openapi = lambda: schema  # FastAPI's documented way to extend its schema
