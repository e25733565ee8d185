"""Series over HTTP: JSON {"series": [[...], ...]} or {"batch": [...]}, every bad body a 4xx with its code;
pure functions of the body, no server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelyard.modalities import InvalidInputError, Limits, get_modality
from modelyard.modalities.series import SeriesSchema

JSON = "application/json"


@pytest.fixture(scope="module")
def codec(vowels):
    series = get_modality("series")
    pre = series.fit_preprocessor({}, series.fit_statistics(vowels), SeriesSchema(12, (7, 29)))
    return series.codec(pre, Limits(max_body_bytes=1_000_000, max_items=8))


def body(doc) -> bytes:
    return json.dumps(doc).encode()


def test_one_series_and_a_batch_decode_to_the_real_frames(vowels, codec):
    one = np.asarray(vowels.series[0]).tolist()
    items, many = codec.decode(body({"series": one}), JSON)
    assert not many and len(items) == 1 and np.allclose(items[0], vowels.series[0])
    items, many = codec.decode(body({"batch": [one, np.asarray(vowels.series[1]).tolist()]}), "application/json; "
                               "charset=utf-8")
    assert many and [len(i) for i in items] == [len(vowels.series[0]), len(vowels.series[1])]
    assert codec.collate(items) == items


BAD_BODIES = [
    (b'{"series": [[1, 2]]}', "text/plain", "not_json"),
    (b'{"series": [[1, 2', JSON, "bad_json"),
    (b'\xff\xfe', JSON, "bad_encoding"),
    (b'[1, 2, 3]', JSON, "bad_json"),
    (body({"frames": [[0.0] * 12]}), JSON, "missing_series"),
    (body({"series": [[0.0] * 12], "batch": []}), JSON, "missing_series"),
    (body({"series": "1,2,3"}), JSON, "bad_type"),
    (body({"batch": [[[0.0] * 12]] * 9}), JSON, "too_many_series"),
    (body({"batch": []}), JSON, "missing_series"),
    (body({"series": [[0.0] * 11] * 10}), JSON, "bad_channels"),
    (body({"series": [[0.0] * 12, [0.0] * 3]}), JSON, "bad_shape"),
    (body({"series": []}), JSON, "bad_shape"),
    (body({"series": [[0.0] * 12] * 117}), JSON, "series_too_long"),
    (b'{"series": [[NaN, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]}', JSON, "not_finite"),
    (body({"series": [[1e39] + [0.0] * 11]}), JSON, "not_finite"),  # past float32's range
    (body({"series": [[2e4] + [0.0] * 11]}), JSON, "value_out_of_range"),  # past the dataset's bound, 1e4
    (body({"series": [[10**400] + [0] * 11]}), JSON, "not_finite"),  # past float64's
    (body({"series": [[False] + [0.0] * 11]}), JSON, "bad_type"),  # JSON's booleans are not numbers
    (body({"series": [["1.5"] + [0.0] * 11]}), JSON, "bad_type"),
    (body({"batch": [[[0.0] * 12], [[None] * 12]]}), JSON, "bad_type"),
]


@pytest.mark.parametrize(("raw", "content_type", "code"), BAD_BODIES)
def test_every_bad_body_is_refused_with_its_documented_code(codec, raw, content_type, code):
    with pytest.raises(InvalidInputError) as exc:
        codec.check_content_type(content_type)
        codec.decode(raw, content_type)
    assert exc.value.code == code, exc.value.message
    assert 400 <= codec.statuses[code] < 500


def test_the_refusals_a_model_card_lists_are_the_codes_a_request_can_meet(codec):
    refusals = codec.refusals()  # and two no body above reaches: the server's size limit, a (0, C) array
    assert set(refusals) == {code for _, _, code in BAD_BODIES} | {"body_too_large", "empty_series"}
    assert set(refusals) <= set(codec.statuses) and all(refusals.values())
    assert "over 116 frames" in refusals["series_too_long"] and "12 numbers" in refusals["bad_channels"]


def test_the_request_body_documents_both_shapes_and_the_limits(codec):
    doc = codec.request_body()
    schema = doc["content"][codec.content_type]["schema"]["oneOf"]
    one = schema[0]["properties"]["series"]
    assert one["maxItems"] == codec.preprocessor.max_length and one["items"]["minItems"] == 12 == \
        one["items"]["maxItems"]
    assert schema[1]["properties"]["batch"]["maxItems"] == 8
    bound = codec.preprocessor.max_abs_value
    assert one["items"]["items"] == {"type": "number", "minimum": -bound, "maximum": bound}
    assert "12 numbers each, within ±10000" in codec.summary()
