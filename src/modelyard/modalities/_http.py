"""Request bodies the codecs share: a JSON object, or the one file of a multipart form. Pure functions of the
bytes and the Content-Type header; every failure is an InvalidInputError with a stable code."""

from __future__ import annotations

import json
import logging
from typing import Any

from modelyard.modalities import InvalidInputError

# Codes these helpers raise, with the HTTP status each one gets.
STATUSES = {"not_json": 415, "bad_encoding": 400, "bad_json": 400, "not_multipart": 415, "bad_form": 400,
            "missing_file": 422, "unexpected_field": 422, "body_too_large": 413}
MAX_FORM_PARTS = 8
# Why each is refused, one line for a model card, split by the body they apply to.
JSON_REFUSALS = {"not_json": "the request does not say content-type application/json",
                 "bad_encoding": "the body is not UTF-8", "bad_json": "the body is not a JSON object"}
FORM_REFUSALS = {"not_multipart": "the request is not a multipart/form-data upload",
                 "bad_form": "the form cannot be read (no boundary, a broken or unfinished part, over "
                             f"{MAX_FORM_PARTS} parts)",
                 "missing_file": "the form has no file in the expected field",
                 "unexpected_field": "the form holds fields beside the file"}


def media_type(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def json_object(body: bytes, content_type: str, what: str) -> dict[str, Any]:
    """The body as a JSON object; `what` says what the model reads, for the error message."""
    if media_type(content_type) != "application/json":
        raise InvalidInputError("not_json", f"this model reads {what}: send a JSON object with content-type "
                                            f"application/json (got {media_type(content_type) or 'none'})")
    try:
        doc = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidInputError("bad_encoding", f"the body is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    except ValueError as exc:
        raise InvalidInputError("bad_json", f"the body is not valid JSON: {exc}") from None
    except RecursionError:  # json's parser recurses once per nesting level
        raise InvalidInputError("bad_json", "the body is not valid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise InvalidInputError("bad_json", f"the body must be a JSON object, got a {type(doc).__name__}")
    return doc


def form_file(body: bytes, content_type: str, field: str, max_file_bytes: int) -> bytes:
    """The bytes of the form's one field `field` (a multipart/form-data body holding nothing else)."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import parse_options_header

    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise InvalidInputError("not_multipart", f"send the file as multipart/form-data in a field named {field!r}")
    if not params.get(b"boundary"):
        raise InvalidInputError("bad_form", "the multipart Content-Type names no boundary")
    try:
        fields = _parse_form(body, params[b"boundary"], max_file_bytes)
    except _TooLarge as exc:
        raise InvalidInputError("body_too_large", str(exc)) from None
    except FormParserError as exc:  # includes every byte-level parse error
        raise InvalidInputError("bad_form", f"could not read the form: {exc}") from None
    if field not in fields:
        raise InvalidInputError("missing_file", f"the form has no file in the field {field!r}")
    if others := sorted(set(fields) - {field}):
        raise InvalidInputError("unexpected_field", f"the form holds only {field!r}; remove "
                                                    f"{', '.join(map(repr, others[:5]))}")
    return fields[field]


class _TooLarge(Exception):
    pass


def _parse_form(body: bytes, boundary: bytes, max_part_bytes: int) -> dict[str, bytes]:
    """{field name: bytes} of a complete multipart body, at most MAX_FORM_PARTS parts of max_part_bytes."""
    from python_multipart import MultipartParser
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartState, parse_options_header

    out: dict[str, bytes] = {}
    part: dict[str, Any] = {"headers": {}, "data": [], "size": 0, "field": [], "value": []}
    state = {"parts": 0, "ended": False}

    def begin() -> None:
        state["parts"] += 1
        if state["parts"] > MAX_FORM_PARTS:
            raise FormParserError(f"more than {MAX_FORM_PARTS} parts")
        part.update(headers={}, data=[], size=0)

    def header_end() -> None:
        name = b"".join(part["field"]).strip().lower()
        part["headers"][name] = b"".join(part["value"]).strip()
        part["field"].clear()
        part["value"].clear()

    def data(chunk: bytes, start: int, end: int) -> None:
        part["size"] += end - start
        if part["size"] > max_part_bytes:
            raise _TooLarge(f"a part of the form is over the {max_part_bytes}-byte limit")
        part["data"].append(chunk[start:end])

    def end_part() -> None:
        disposition, options = parse_options_header(part["headers"].get(b"content-disposition", b"").decode("latin-1"))
        if disposition != b"form-data" or b"name" not in options:
            raise FormParserError("a part has no Content-Disposition: form-data; name=...")
        out[options[b"name"].decode("utf-8", "replace")] = b"".join(part["data"])

    parser = MultipartParser(boundary, {
        "on_part_begin": begin, "on_part_data": data, "on_part_end": end_part,
        "on_header_field": lambda b, s, e: part["field"].append(b[s:e]),
        "on_header_value": lambda b, s, e: part["value"].append(b[s:e]),
        "on_header_end": header_end, "on_end": lambda: state.update(ended=True)})
    quiet = logging.getLogger("python_multipart.multipart")  # it logs each parse error it then raises
    level, quiet.level = quiet.level, logging.CRITICAL
    try:
        parser.write(body)
    finally:
        quiet.setLevel(level)
    if not state["ended"] or parser.state != MultipartState.END:  # finalize() does not check this
        raise FormParserError("the multipart body ends before its closing boundary")
    return out
