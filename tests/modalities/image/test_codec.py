"""modelyard.modalities.image.codec: an image file in a multipart form over HTTP, as pure functions of the
body (no Ray, no web server). A real PNG decodes to the training-shaped array; every error code the codec can
raise comes from a body with exactly that problem, and has its HTTP status; its OpenAPI part is valid."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image
from urllib3 import encode_multipart_formdata

from helpers.models import GRAY_28
from modelyard.modalities import InvalidInputError, Limits, get_modality
from modelyard.modalities._http import MAX_FORM_PARTS
from modelyard.modalities.image.codec import FORM_OVERHEAD, ImageCodec

LIMIT = 64 * 1024
JSON_ONLY = {"not_json", "bad_encoding", "bad_json"}  # codes of JSON bodies, which this codec never reads


@pytest.fixture
def codec() -> ImageCodec:
    return get_modality("image").codec(GRAY_28, Limits(max_body_bytes=LIMIT))


def form(**fields: bytes) -> tuple[bytes, str]:
    files = {name: (f"{name}.png", data, "image/png") for name, data in fields.items()}
    return encode_multipart_formdata(files)


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A small, well-formed PNG whose header declares width x height (a decompression bomb's shape)."""
    data = bytearray(png(Image.fromarray(np.zeros((10, 10), dtype=np.uint8))))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def test_a_real_png_in_a_form_decodes_to_the_training_shaped_image(codec, image_bytes, test_sample):
    body, content_type = form(file=image_bytes["shirt"])
    codec.check_content_type(content_type)
    items, many = codec.decode(body, content_type)
    assert many is False and len(items) == 1
    first_shirt = test_sample.images[np.flatnonzero(test_sample.labels == 6)[0]]
    assert items[0].shape == (28, 28) and items[0].dtype == np.uint8 and np.array_equal(items[0], first_shirt)
    other, _ = codec.decode(*form(file=image_bytes["bag"]))
    batch = codec.collate(items + other)
    assert batch.shape == (2, 28, 28)
    assert np.array_equal(GRAY_28.check_batch(batch), batch)  # what the Predictor takes


def bodies(image_bytes) -> dict[str, list[tuple[bytes, str]]]:
    """For each error code, bodies (with their Content-Type) that have exactly that problem."""
    shirt = image_bytes["shirt"]
    good, content_type = form(file=shirt)
    boundary = content_type.split("boundary=")[1]
    tiny = png(Image.open(io.BytesIO(shirt)).crop((10, 10, 14, 14)))  # 4x4 px of the real shirt
    big = png(Image.open(io.BytesIO(shirt)).resize((2000, 2000)).point(lambda v: v ^ 0x55))  # over 64 KiB
    nine = form(file=shirt, **{f"extra{i}": shirt for i in range(MAX_FORM_PARTS)})
    return {
        "not_multipart": [(shirt, "image/png"), (good, "application/json")],
        "bad_form": [(good, "multipart/form-data"),  # no boundary
                     (good[: len(good) // 2], content_type),  # truncated
                     nine,  # more than 8 parts
                     (good.replace(b"Content-Disposition: form-data", b"Content-Disposition: attachment"),
                      content_type),
                     (good.replace(boundary.encode(), b"x" * len(boundary), 1), content_type)],
        "missing_file": [form(image=shirt)],
        "unexpected_field": [form(file=shirt, caption=b"a shirt")],
        "body_too_large": [form(file=big)],
        "empty_file": [form(file=b"")],
        "not_an_image": [form(file=b"this is a text file, not a picture"),
                         form(file=shirt[: len(shirt) // 2])],
        "image_too_small": [form(file=tiny)],
        "image_too_large": [form(file=png_declaring(5000, 5000))],
    }


CODES = ["not_multipart", "bad_form", "missing_file", "unexpected_field", "body_too_large", "empty_file",
         "not_an_image", "image_too_small", "image_too_large"]


@pytest.mark.parametrize("code", CODES)
def test_each_error_comes_from_a_body_with_exactly_that_problem(codec, image_bytes, code):
    cases = bodies(image_bytes)[code]
    for body, content_type in cases:
        with pytest.raises(InvalidInputError) as exc:
            codec.decode(body, content_type)
        assert exc.value.code == code, (content_type, exc.value.message)
        assert exc.value.message
        assert 400 <= codec.statuses[code] < 500


def test_every_code_the_codec_has_a_status_for_is_exercised():
    assert set(CODES) == set(ImageCodec.statuses) - JSON_ONLY
    assert {code: ImageCodec.statuses[code] for code in ("not_multipart", "body_too_large", "missing_file",
                                                         "bad_form")} == \
        {"not_multipart": 415, "body_too_large": 413, "missing_file": 422, "bad_form": 400}


def test_the_refusals_a_model_card_lists_are_the_codes_a_request_can_meet(codec):
    refusals = codec.refusals()
    assert set(refusals) == set(CODES)
    assert all(refusals.values()) and f"{LIMIT:,} bytes" in refusals["body_too_large"]


def test_the_size_limit_is_on_the_file_not_the_forms_framing(codec, image_bytes):
    assert codec.max_body_bytes == LIMIT + FORM_OVERHEAD
    photo = png(Image.open(io.BytesIO(image_bytes["coat"])).resize((600, 600)).point(lambda v: v ^ 0x33))
    assert len(photo) > 1024
    exact = get_modality("image").codec(GRAY_28, Limits(max_body_bytes=len(photo)))
    assert exact.decode(*form(file=photo))[0][0].shape == (28, 28)  # a file of exactly the limit passes
    below = get_modality("image").codec(GRAY_28, Limits(max_body_bytes=len(photo) - 1))
    with pytest.raises(InvalidInputError) as exc:
        below.decode(*form(file=photo))
    assert exc.value.code == "body_too_large"


def test_the_content_type_is_checked_before_the_body(codec):
    codec.check_content_type("multipart/form-data; boundary=abc")
    codec.check_content_type("Multipart/Form-Data")
    with pytest.raises(InvalidInputError) as exc:
        codec.check_content_type("application/json")
    assert exc.value.code == "not_multipart" and "application/json" in exc.value.message
    with pytest.raises(InvalidInputError, match="no content type"):
        codec.check_content_type("")


def test_the_request_body_is_a_valid_openapi_request_body(codec, image_bytes):
    import jsonschema_rs
    from jsonschema import Draft202012Validator
    from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

    request_body = codec.request_body()
    assert list(request_body["content"]) == [codec.content_type]
    document = {"openapi": "3.1.0", "info": {"title": "t", "version": "1"},
                "paths": {"/predict": {"post": {"requestBody": request_body,
                                                "responses": {"200": {"description": "ok"}}}}}}
    OPENAPI_31_VALIDATOR.validate(document)
    schema = request_body["content"][codec.content_type]["schema"]
    Draft202012Validator.check_schema(schema)
    assert schema["required"] == ["file"] and schema["properties"]["file"]["format"] == "binary"
    listed = {"requestBody": {"content": [request_body["content"]]},
              "responses": {"200": {"description": "ok"}}}
    broken = {**document, "paths": {"/predict": {"post": listed}}}
    # The validator can fail: a list is no content map.
    with pytest.raises(jsonschema_rs.ValidationError, match=r'\["requestBody"\]\["content"\]'):
        OPENAPI_31_VALIDATOR.validate(broken)
    assert f"{LIMIT:,}" in codec.summary() and "'file'" in codec.summary()
