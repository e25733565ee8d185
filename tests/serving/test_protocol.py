"""serving.protocol and serving.openapi: what serving does with a request before and after the modality's codec,
as pure functions of an ASGI request (no Ray, no web server): the body read within its byte and time limits,
the bearer token, the error body and its status, the answer's shape, and the OpenAPI document a replica
serves."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi import FastAPI
from starlette.requests import Request

from helpers.models import GRAY_28
from modelyard.modalities import Limits, get_modality
from serving import openapi, protocol


def request(chunks: list[bytes], headers: dict[str, str] | None = None, delay_s: float = 0.0) -> Request:
    """A POST whose body arrives as `chunks` (each after `delay_s`), like a chunked upload."""
    pending = list(chunks)

    async def receive() -> dict:
        if delay_s:
            await asyncio.sleep(delay_s)
        body = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "POST", "path": "/predict", "headers": raw}, receive)


def body_of(response) -> dict:
    return json.loads(response.body)


def test_the_error_body_names_the_code_and_takes_its_status_from_serving_or_the_codec():
    too_large = protocol.error("body_too_large", "request body is 9 bytes; the limit is 8 bytes")
    assert too_large.status_code == 413
    assert body_of(too_large) == {"error": "body_too_large", "detail": "request body is 9 bytes; the limit is 8 bytes"}
    assert protocol.error("not_an_image", "x", {"not_an_image": 415}).status_code == 415
    assert protocol.error("bad_json", "x").status_code == 400  # a code nobody maps is a plain bad request


def test_a_configured_token_is_required_and_compared_whole():
    assert protocol.unauthorized(request([]), None) is None  # no token configured: open
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer s3cret-and-more"},
                    {"Authorization": "s3cret"}):
        answer = protocol.unauthorized(request([], headers), "s3cret")
        assert answer is not None and answer.status_code == 401, headers
        assert answer.headers["www-authenticate"] == "Bearer" and body_of(answer)["error"] == "unauthorized"
    assert protocol.unauthorized(request([], {"Authorization": "Bearer s3cret"}), "s3cret") is None


def test_a_declared_length_over_the_cap_is_refused_before_reading():
    refused = protocol.declared_too_large(request([], {"content-length": "101"}), cap=100)
    assert refused is not None and refused.status_code == 413 and "101 bytes" in body_of(refused)["detail"]
    assert protocol.declared_too_large(request([], {"content-length": "100"}), cap=100) is None
    assert protocol.declared_too_large(request([]), cap=100) is None  # chunked: read_body enforces the cap


def test_the_body_is_read_whole_within_the_cap():
    body = asyncio.run(protocol.read_body(request([b"ab", b"cd", b"e"]), cap=5, timeout_s=5))
    assert body == b"abcde"


def test_a_chunked_body_is_cut_off_once_it_passes_the_cap():
    answer = asyncio.run(protocol.read_body(request([b"abc", b"def", b"ghi"]), cap=5, timeout_s=5))
    assert not isinstance(answer, bytes) and answer.status_code == 413
    assert body_of(answer)["error"] == "body_too_large" and "5-byte" in body_of(answer)["detail"]


def test_a_body_trickling_in_slower_than_the_limit_gets_408_with_what_arrived():
    slow = request([b"x" * 10] * 20, delay_s=0.05)  # 1 s to send it all
    answer = asyncio.run(protocol.read_body(slow, cap=1_000, timeout_s=0.2))
    assert not isinstance(answer, bytes) and answer.status_code == 408
    detail = body_of(answer)["detail"]
    assert body_of(answer)["error"] == "body_too_slow" and "0.2 s" in detail and "bytes came" in detail


def test_one_prediction_is_answered_as_it_is_and_several_under_one_model():
    model = {"name": "fashion-mnist-cnn", "version": "3"}
    shirt = {"label": "Shirt", "index": 6, "model": model}
    bag = {"label": "Bag", "index": 8, "model": model}
    assert protocol.answer([shirt], many=False) == shirt
    assert protocol.answer([shirt, bag], many=True) == {
        "predictions": [{"label": "Shirt", "index": 6}, {"label": "Bag", "index": 8}], "model": model}


@pytest.mark.parametrize("secured", [False, True])
def test_the_openapi_document_carries_the_codecs_body_and_the_token_only_when_one_is_set(secured):
    app = FastAPI(title="fashion-mnist-cnn", description="A served task.")

    @app.post("/predict", responses=openapi.PREDICT_ERRORS)
    def predict() -> dict:
        return {}

    @app.get("/health")
    def health() -> dict:
        return {}

    codec = get_modality("image").codec(GRAY_28, Limits(max_body_bytes=4096))
    openapi.document(app, codec, secured=secured)
    schema = app.openapi()
    assert schema["paths"]["/predict"]["post"]["requestBody"] == codec.request_body()
    assert "multipart/form-data" in schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert codec.summary() in schema["info"]["description"]
    errors = schema["paths"]["/predict"]["post"]["responses"]
    assert {"400", "408", "413", "415", "422", "503"} <= set(errors)
    assert errors["413"]["content"]["application/json"]["schema"]["required"] == ["error", "detail"]
    assert ("security" in schema) is secured
    if secured:
        assert schema["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
        assert schema["paths"]["/health"]["get"]["security"] == []  # health stays open for load balancers
