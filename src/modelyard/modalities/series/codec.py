"""Series over HTTP: JSON `{"series": [[c1, ..., cC], ...]}` (frames of C numbers) for one, `{"batch": [...]}`
for several."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from modelyard.modalities import Codec, InvalidInputError
from modelyard.modalities._http import JSON_REFUSALS, STATUSES, json_object


class SeriesCodec(Codec):
    content_type: ClassVar[str] = "application/json"
    wrong_type: ClassVar[str] = "not_json"
    record_field: ClassVar[str] = "series"  # a list of frames, each a list of numbers
    statuses: ClassVar[dict[str, int]] = STATUSES | {
        "missing_series": 422, "bad_type": 422, "bad_shape": 422, "bad_channels": 422, "empty_series": 422,
        "not_finite": 422, "value_out_of_range": 422, "series_too_long": 413, "too_many_series": 413}

    def decode(self, body: bytes, content_type: str) -> tuple[list[Any], bool]:
        doc = json_object(body, content_type, 'series: {"series": [[...], ...]} or {"batch": [...]}')
        if ("series" in doc) == ("batch" in doc):
            raise InvalidInputError("missing_series", 'send an object with either "series" (a list of frames, '
                                                      'each a list of numbers) or "batch" (a list of series)')
        many = "batch" in doc
        batch = doc["batch"] if many else [doc["series"]]
        if not isinstance(batch, list) or not all(isinstance(s, list) for s in batch):
            raise InvalidInputError("bad_type", '"series" must be a list of frames and "batch" a list of series')
        if many and not 1 <= len(batch) <= self.limits.max_items:
            raise InvalidInputError("too_many_series" if batch else "missing_series",
                                    f'"batch" holds {len(batch)} series; send 1 to {self.limits.max_items}')
        for i, series in enumerate(batch):
            _check_numbers(i, series)
        return self.preprocessor.check_batch(batch), many

    def decode_record(self, value: Any) -> Any:
        if isinstance(value, np.ndarray):  # a Parquet list-of-lists cell
            value = [np.asarray(frame).tolist() for frame in value]
        if not isinstance(value, list):
            raise InvalidInputError("bad_type", f"a series is a list of frames, got {type(value).__name__}")
        _check_numbers(0, value)
        return self.preprocessor.check_batch([value])[0]

    def collate(self, items: list[Any]) -> list[Any]:
        return list(items)

    def _series_schema(self) -> dict[str, Any]:
        bound = self.preprocessor.max_abs_value
        frame = {"type": "array", "items": {"type": "number", "minimum": -bound, "maximum": bound},
                 "minItems": self.preprocessor.channels, "maxItems": self.preprocessor.channels}
        return {"type": "array", "items": frame, "minItems": 1, "maxItems": self.preprocessor.max_length}

    def request_body(self) -> dict[str, Any]:
        one = self._series_schema()
        return {"required": True, "content": {"application/json": {"schema": {"oneOf": [
            {"type": "object", "required": ["series"], "properties": {"series": one}},
            {"type": "object", "required": ["batch"], "properties": {"batch": {
                "type": "array", "items": one, "minItems": 1, "maxItems": self.limits.max_items}}},
        ]}}}}

    def summary(self) -> str:
        p = self.preprocessor
        return (f'Send JSON {{"series": [[...], ...]}}: 1 to {p.max_length} frames of {p.channels} numbers '
                f'each, within ±{p.max_abs_value:g}, or {{"batch": [...]}} with 1 to {self.limits.max_items} series; bodies over '
                f"{self.limits.max_body_bytes:,} bytes get 413.")

    def refusals(self) -> dict[str, str]:
        p = self.preprocessor
        return JSON_REFUSALS | {
            "body_too_large": f"the body is over {self.limits.max_body_bytes:,} bytes",
            "missing_series": 'the object has neither "series" nor "batch", both, or an empty "batch"',
            "bad_type": "a series is not a list of frames, or a frame holds strings, booleans or nulls",
            "bad_shape": "a series is not a grid: frames of different lengths, or no frames at all",
            "bad_channels": f"the frames do not hold {p.channels} numbers each",
            "empty_series": "a series has no frames",
            "series_too_long": f"a series has over {p.max_length} frames",
            "not_finite": "a value is NaN, infinite or beyond float32's range",
            "value_out_of_range": f"a value's magnitude is over {p.max_abs_value:g}",
            "too_many_series": f'"batch" holds over {self.limits.max_items} series'}


def _check_numbers(i: int, series: list[Any]) -> None:
    if not all(isinstance(frame, list) and all(type(v) in (int, float) for v in frame) for frame in series):
        raise InvalidInputError("bad_type", f"series {i}: every frame must be a list of numbers "
                                            "(not strings, booleans or nulls)")
