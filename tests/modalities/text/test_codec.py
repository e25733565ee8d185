"""modelyard.modalities.text.codec: texts over HTTP as JSON, as pure functions of the body (no Ray, no web
server), on real Rotten Tomatoes sentences. Every error code the codec can raise comes from a body with
exactly that problem and has its HTTP status; its OpenAPI part is valid and agrees with the decoder."""

from __future__ import annotations

import json

import pytest

from modelyard.data.dataset import load_split
from modelyard.modalities import InvalidInputError, Limits, get_modality
from modelyard.modalities.text import TextSchema
from modelyard.modalities.text.codec import TextCodec
from modelyard.modalities.text.preprocess import MAX_TEXT_CHARS
from modelyard.models.bert import BertConfig

JSON = "application/json"
MAX_ITEMS = 8
# Codes of multipart bodies, which this codec never reads (the server checks the body's size before decoding).
FORM_ONLY = {"not_multipart", "bad_form", "missing_file", "unexpected_field", "body_too_large"}


@pytest.fixture(scope="module")
def codec() -> TextCodec:
    pre = get_modality("text").fit_preprocessor(BertConfig(max_length=32).preprocessing(), {}, TextSchema())
    return get_modality("text").codec(pre, Limits(max_body_bytes=1024 * 1024, max_items=MAX_ITEMS))


@pytest.fixture(scope="module")
def texts(rt_polarity_dir) -> list[str]:
    return load_split(rt_polarity_dir, "test").texts


def body(doc) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


def test_one_text_and_several_decode_to_what_the_predictor_takes(codec, texts):
    items, many = codec.decode(body({"text": texts[0]}), JSON)
    assert items == [texts[0]] and many is False
    items, many = codec.decode(body({"texts": texts[:MAX_ITEMS]}), "application/json; charset=utf-8")
    assert items == texts[:MAX_ITEMS] and many is True
    assert codec.collate(items[:2] + items[2:]) == texts[:MAX_ITEMS]
    accented = next(t for t in texts if any(ord(c) > 127 for c in t))  # real UTF-8 beyond ASCII
    assert codec.decode(body({"text": accented}), JSON)[0] == [accented]


def bodies(texts) -> dict[str, list[tuple[bytes, str]]]:
    """For each error code, bodies (with their Content-Type) that have exactly that problem."""
    one = body({"text": texts[0]})
    long_text = ""
    for t in texts:  # real sentences, one after another, until the text is over the limit
        long_text += t + " "
        if len(long_text) > MAX_TEXT_CHARS:
            break
    return {
        "not_json": [(one, "text/plain"), (one, "multipart/form-data; boundary=x"), (one, "")],
        "bad_encoding": [(b'{"text": "' + texts[0].encode()[:20] + b'\xff"}', JSON),  # a stray byte
                         ('{"text": "caf\u00e9"}'.encode("latin-1"), JSON)],
        "bad_json": [(one[:-3], JSON), (body([texts[0]]), JSON), (body(texts[0]), JSON)],
        "missing_text": [(body({}), JSON), (body({"text": texts[0], "texts": texts[1:3]}), JSON),
                         (body({"texts": []}), JSON), (body({"sentence": texts[0]}), JSON)],
        "bad_type": [(body({"texts": texts[0]}), JSON), (body({"texts": {"a": texts[0]}}), JSON)],
        "too_many_texts": [(body({"texts": texts[: MAX_ITEMS + 1]}), JSON)],
        "not_a_string": [(body({"text": 3}), JSON), (body({"texts": [texts[0], None]}), JSON),
                         (body({"text": [texts[0]]}), JSON)],
        "empty_text": [(body({"text": ""}), JSON), (body({"texts": [texts[0], " \n\t"]}), JSON)],
        "text_too_long": [(body({"text": long_text}), JSON)],
    }


CODES = ["not_json", "bad_encoding", "bad_json", "missing_text", "bad_type", "too_many_texts", "not_a_string",
         "empty_text", "text_too_long"]


@pytest.mark.parametrize("code", CODES)
def test_each_error_comes_from_a_body_with_exactly_that_problem(codec, texts, code):
    for data, content_type in bodies(texts)[code]:
        with pytest.raises(InvalidInputError) as exc:
            codec.decode(data, content_type)
        assert exc.value.code == code, (data[:60], exc.value.message)
        assert exc.value.message
        assert 400 <= codec.statuses[code] < 500


def test_every_code_the_codec_has_a_status_for_is_exercised():
    assert set(CODES) == set(TextCodec.statuses) - FORM_ONLY
    assert {code: TextCodec.statuses[code] for code in ("not_json", "bad_json", "empty_text", "text_too_long",
                                                        "too_many_texts")} == \
        {"not_json": 415, "bad_json": 400, "empty_text": 422, "text_too_long": 413, "too_many_texts": 413}


def test_the_refusals_a_model_card_lists_are_the_codes_a_request_can_meet(codec):
    refusals = codec.refusals()  # and body_too_large, which the server answers before the codec reads the body
    assert set(refusals) == set(CODES) | {"body_too_large"} and set(refusals) <= set(codec.statuses)
    assert all(refusals.values()) and f"over {MAX_ITEMS} texts" in refusals["too_many_texts"]


def test_the_content_type_is_checked_before_the_body(codec):
    codec.check_content_type("application/json; charset=utf-8")
    with pytest.raises(InvalidInputError) as exc:
        codec.check_content_type("text/plain")
    assert exc.value.code == "not_json" and "text/plain" in exc.value.message
    assert codec.max_body_bytes == 1024 * 1024


def test_the_request_body_is_a_valid_openapi_request_body_that_agrees_with_the_decoder(codec, texts):
    import jsonschema_rs
    from jsonschema import Draft202012Validator
    from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

    request_body = codec.request_body()
    assert list(request_body["content"]) == [codec.content_type] == [JSON]
    post = {"requestBody": request_body, "responses": {"200": {"description": "ok"}}}
    OPENAPI_31_VALIDATOR.validate({"openapi": "3.1.0", "info": {"title": "t", "version": "1"},
                                   "paths": {"/predict": {"post": post}}})
    schema = request_body["content"][JSON]["schema"]
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    for doc in ({"text": texts[0]}, {"texts": texts[:MAX_ITEMS]}):  # what the schema allows, the codec takes
        assert validator.is_valid(doc)
        codec.decode(body(doc), JSON)
    for doc in ({"text": ""}, {"text": " "}, {"texts": []}, {"texts": texts[: MAX_ITEMS + 1]}, {"text": 3},
                {"texts": [texts[0], 3]}):  # what the schema refuses, the codec refuses
        assert not validator.is_valid(doc), doc
        with pytest.raises(InvalidInputError):
            codec.decode(body(doc), JSON)
    with pytest.raises(jsonschema_rs.ValidationError):  # the validator can fail
        OPENAPI_31_VALIDATOR.validate({"openapi": "3.1.0", "info": {"title": "t"}, "paths": {}})
    assert f"1 to {MAX_ITEMS} texts" in codec.summary()
