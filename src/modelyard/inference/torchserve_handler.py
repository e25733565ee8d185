"""TorchServe's handler for a modelyard archive (`modelyard export torchserve`): this file goes into the .mar.

TorchServe calls `handle(data, context)` for each batch of requests. The first call loads the model from the
archive's directory with modelyard's own Predictor (modelyard itself from the archive's `modelyard-code.zip`
when TorchServe's Python does not have it installed), and each request is decoded by the modality's codec, the
code Ray Serve's endpoint runs, so both answer a given input the same way and refuse the same bad inputs:

    images:  the file's bytes as the body (`curl -T photo.png`, or multipart field `data`)
    texts:   {"text": "..."} or {"texts": [...]} (JSON), as Ray Serve takes them
    series:  {"series": [[...], ...]} or {"batch": [...]} (JSON), as Ray Serve takes them

An answer is Ray Serve's: {"label", "index", "scores", "model": {"name", "version"}} (several inputs:
{"predictions": [...], "model": ...}); a bad input is a 400 whose message is Ray Serve's error body.
Nothing at import time: TorchServe imports this file before it calls it.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

ARCHIVE_META = "torchserve.json"  # name, version and what the archive was built from
CODE_ZIP = "modelyard-code.zip"
MAX_BODY_BYTES = 4 * 1024 * 1024  # Ray Serve's default limit of a request's body

_service: Any = None


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[Any] | None:
    """TorchServe's entry point: None (the model is being loaded) or one answer per request of the batch."""
    global _service
    if _service is None:
        _service = Service(context.system_properties["model_dir"])
    if data is None:
        return None
    return _service.handle(data)


class Service:
    """The loaded model and its codec."""

    def __init__(self, model_dir: str) -> None:
        try:
            import modelyard  # noqa: F401  (installed where TorchServe runs)
        except ImportError:
            sys.path.insert(0, os.path.join(model_dir, CODE_ZIP))  # the code the archive carries
        from modelyard.inference import Predictor
        from modelyard.modalities import Limits

        with open(os.path.join(model_dir, ARCHIVE_META)) as f:
            self.meta = json.load(f)
        self.predictor = Predictor.from_dir(model_dir, backend="torch")
        self.codec = self.predictor.spec.modality.codec(self.predictor.preprocessor, Limits(MAX_BODY_BYTES))
        self.model = {"name": self.meta["name"], "version": self.meta["version"]}

    def handle(self, data: list[dict[str, Any]]) -> list[Any]:
        """Every request decoded first (a bad one fails its batch with a 400), then one forward pass."""
        decoded = [self.decode(row) for row in data]
        items = [x for inputs, _ in decoded for x in inputs]
        predictions = [{**p.to_dict(), "model": self.model} for p in self.predictor.predict(self.codec.collate(items))]
        answers, start = [], 0
        for inputs, many in decoded:
            mine, start = predictions[start:start + len(inputs)], start + len(inputs)
            answers.append({"predictions": [{k: v for k, v in p.items() if k != "model"} for p in mine],
                            "model": self.model} if many else mine[0])
        return answers

    def decode(self, row: dict[str, Any]) -> tuple[list[Any], bool]:
        from modelyard.modalities import InvalidInputError

        body = row.get("data") if row.get("data") is not None else row.get("body")
        try:
            if body is None or (isinstance(body, bytes | bytearray) and not body):
                raise InvalidInputError("empty_body", "the request has no body")
            if isinstance(body, dict | list):  # TorchServe parsed a JSON body
                body = json.dumps(body).encode()
            elif isinstance(body, str):
                body = body.encode()
            if len(body) > MAX_BODY_BYTES:
                raise InvalidInputError("body_too_large", f"the body has {len(body):,} bytes; at most "
                                                          f"{MAX_BODY_BYTES:,}")
            return self.codec.decode_raw(bytes(body))
        except InvalidInputError as exc:
            from ts.utils.util import PredictionException

            raise PredictionException(json.dumps({"error": exc.code, "detail": exc.message}), 400) from None
