"""Texts over HTTP: JSON `{"text": "..."}` for one, `{"texts": [...]}` for several."""

from __future__ import annotations

from typing import Any, ClassVar

from modelyard.modalities import Codec, InvalidInputError
from modelyard.modalities._http import JSON_REFUSALS, STATUSES, json_object
from modelyard.modalities.text.preprocess import MAX_TEXT_CHARS

TEXT_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_CHARS, "pattern": r"\S"}


class TextCodec(Codec):
    content_type: ClassVar[str] = "application/json"
    wrong_type: ClassVar[str] = "not_json"
    record_field: ClassVar[str] = "text"
    statuses: ClassVar[dict[str, int]] = STATUSES | {
        "missing_text": 422, "bad_type": 422, "not_a_string": 422, "empty_text": 422, "text_too_long": 413,
        "too_many_texts": 413}

    def decode(self, body: bytes, content_type: str) -> tuple[list[Any], bool]:
        doc = json_object(body, content_type, 'text: {"text": "..."} or {"texts": [...]}')
        if ("text" in doc) == ("texts" in doc):
            raise InvalidInputError("missing_text", 'send an object with either "text" (a string) or "texts" '
                                                    "(a list)")
        many = "texts" in doc
        texts = doc["texts"] if many else [doc["text"]]
        if many and not isinstance(texts, list):
            raise InvalidInputError("bad_type", f'"texts" must be a list of strings, got {type(texts).__name__}')
        if many and not 1 <= len(texts) <= self.limits.max_items:
            raise InvalidInputError("too_many_texts" if texts else "missing_text",
                                    f'"texts" holds {len(texts)} texts; send 1 to {self.limits.max_items}')
        return self.preprocessor.check_batch(texts), many

    def collate(self, items: list[str]) -> list[str]:
        return list(items)

    def request_body(self) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": {"oneOf": [
            {"type": "object", "required": ["text"], "properties": {"text": TEXT_SCHEMA}},
            {"type": "object", "required": ["texts"], "properties": {"texts": {
                "type": "array", "items": TEXT_SCHEMA, "minItems": 1, "maxItems": self.limits.max_items}}},
        ]}}}}

    def summary(self) -> str:
        return (f'Send JSON {{"text": "..."}} or {{"texts": [...]}} with 1 to {self.limits.max_items} texts of at '
                f"most {MAX_TEXT_CHARS:,} characters each; bodies over {self.limits.max_body_bytes:,} bytes get 413.")

    def refusals(self) -> dict[str, str]:
        return JSON_REFUSALS | {
            "body_too_large": f"the body is over {self.limits.max_body_bytes:,} bytes",
            "missing_text": 'the object has neither "text" nor "texts", both, or an empty "texts"',
            "bad_type": '"texts" is not a list',
            "not_a_string": "a text is not a string",
            "empty_text": "a text is empty or only whitespace",
            "text_too_long": f"a text is over {MAX_TEXT_CHARS:,} characters",
            "too_many_texts": f'"texts" holds over {self.limits.max_items} texts'}
