"""The HTTP side of a request that no modality owns: reading the body within limits, the bearer token, the
JSON error body and the shape of an answer. The body's contents are the modality's codec's business."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

# Codes serving itself answers with, beside the codecs' own.
STATUSES = {"body_too_large": 413, "body_too_slow": 408, "not_ready": 503}


def error(code: str, detail: str, statuses: dict[str, int] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code={**STATUSES, **(statuses or {})}.get(code, 400))


def unauthorized(request: Request, token: str | None) -> JSONResponse | None:
    """The 401 answer when a token is configured and the request does not carry it; None otherwise."""
    if token and not hmac.compare_digest(request.headers.get("authorization", "").encode(), f"Bearer {token}".encode()):
        return JSONResponse({"error": "unauthorized", "detail": "send the header 'Authorization: Bearer <token>'"},
                            status_code=401, headers={"WWW-Authenticate": "Bearer"})
    return None


def declared_too_large(request: Request, cap: int) -> JSONResponse | None:
    """413 at once for a body whose declared length is over `cap`, before reading any of it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        return error("body_too_large", f"request body is {int(declared)} bytes; the limit is {cap} bytes")
    return None


async def read_body(request: Request, cap: int, timeout_s: float) -> bytes | JSONResponse:
    """The whole body, refused once it passes `cap` bytes (a chunked upload declares no length) or when it has
    not all arrived within `timeout_s` (a client trickling its upload would otherwise hold a replica's slot)."""
    body = bytearray()

    async def read() -> bool:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > cap:
                return False
        return True

    try:
        complete = await asyncio.wait_for(read(), timeout_s)
    except TimeoutError:
        return error("body_too_slow", f"the request body did not arrive within {timeout_s:g} s ({len(body)} bytes came)")
    if not complete:
        return error("body_too_large", f"request body is over the {cap}-byte limit")
    return bytes(body)


def answer(predictions: list[dict[str, Any]], many: bool) -> dict[str, Any]:
    """One prediction as it is; several as {"predictions": [...], "model": ...} (each names the same model)."""
    if not many:
        return predictions[0]
    return {"predictions": [{k: v for k, v in p.items() if k != "model"} for p in predictions],
            "model": predictions[0]["model"]}
