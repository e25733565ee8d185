"""The Ray Serve application: a FastAPI ingress over the promoted model, batched, on N replicas.

    POST /predict   image models: multipart form with an image in `file` -> {"label", "index", "scores", "model"}
                    text models: JSON {"text": "..."} -> {"label", "index", "scores", "truncated", "model"}
                                 or {"texts": [...]} -> {"predictions": [...], "model"}
    GET  /health    {"status": "ok", "model": {...}}
    GET  /model     name, version, alias, run id and test metrics of the model being served

Business rules (what a usable image is, how to preprocess) live in modelyard.inference; this module only
maps HTTP to them. Bad input gets a 4xx JSON body {"error": <code>, "detail": <message>}.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at runtime.

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from modelyard import registry
from modelyard.inference import InvalidInputError, Predictor, decode_image

log = logging.getLogger("modelyard.serving")

STATUS_BY_CODE = {
    "empty_file": 400,
    "not_an_image": 415,
    "not_multipart": 415,
    "image_too_small": 422,
    "image_too_large": 413,
    "missing_file": 422,
    "body_too_large": 413,
    "bad_form": 400,
    "not_json": 415,
    "bad_json": 400,
    "bad_encoding": 400,
    "missing_text": 422,
    "bad_type": 422,
    "not_a_string": 422,
    "empty_text": 422,
    "text_too_long": 413,
    "too_many_texts": 413,
}
MAX_TEXTS_PER_REQUEST = 64
TEXT_SCHEMA = {"type": "string", "minLength": 1, "pattern": r"\S"}
PREDICT_BODY = {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}},
    "application/json": {"schema": {"oneOf": [
        {"type": "object", "required": ["text"], "properties": {"text": TEXT_SCHEMA}},
        {"type": "object", "required": ["texts"], "properties": {"texts": {
            "type": "array", "items": TEXT_SCHEMA, "minItems": 1, "maxItems": MAX_TEXTS_PER_REQUEST}}},
    ]}},
}}


@dataclass(frozen=True)
class ServerSettings:
    tracking_uri: str
    model_name: str
    alias: str = "champion"
    max_upload_bytes: int = 4 * 1024 * 1024
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.01


def error(code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=STATUS_BY_CODE.get(code, 400))


api = FastAPI(
    title="modelyard",
    description="Predictions from the promoted (champion) model in the MLflow registry.",
    version="1",
)


@serve.deployment(name="ModelServer", num_replicas=2, max_ongoing_requests=64, health_check_period_s=5)
@serve.ingress(api)
class ModelServer:
    def __init__(self, settings: ServerSettings) -> None:
        import torch

        torch.set_num_threads(1)  # replicas share the cores with each other (and with training)
        self.settings = settings
        self.predictor = None  # a Predictor once reconfigure() has loaded a version
        self.info: dict[str, Any] = {}
        self._predict_batch.set_max_batch_size(settings.max_batch_size)
        self._predict_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Load the model version named in the deployment's user_config (set by `deploy`).

        A new champion is rolled out by redeploying with a new version here: Serve calls this on running
        replicas, which keep answering with the old model until the new one has loaded.
        """
        version = str(user_config["model_version"])
        if self.info.get("version") == version:
            return
        s = self.settings
        with registry.fetched_model_dir(s.tracking_uri, s.model_name, version=version) as (model_dir, mv):
            predictor = Predictor.from_dir(model_dir)  # weights now in memory; the download is removed
        run = registry.get_run(s.tracking_uri, mv.run_id) if mv.run_id else {"metrics": {}}
        self.predictor = predictor
        self.info = {
            "name": s.model_name,
            "version": mv.version,
            "alias": s.alias,
            "aliases": mv.aliases,
            "run_id": mv.run_id,
            "source": mv.source,
            "labels": predictor.labels,
            "test_metrics": {k.removeprefix("test/"): v for k, v in run["metrics"].items()
                             if k.startswith("test/") and "/f1/" not in k},
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        log.info("serving %s v%s", s.model_name, mv.version)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _predict_batch(self, inputs: list[Any]) -> list[dict[str, Any]]:
        """A batch of decoded images, or of texts, from concurrent requests: one forward pass."""
        predictor = self.predictor
        batch = list(inputs) if predictor.modality == "text" else np.stack(inputs)
        predictions = await asyncio.to_thread(predictor.predict, batch)
        return [p.to_dict() for p in predictions]

    @api.get("/health")
    async def health(self) -> dict[str, Any]:
        return {"status": "ok" if self.predictor else "loading",
                "model": {k: self.info.get(k) for k in ("name", "version")}}

    @api.get("/model")
    async def model(self) -> dict[str, Any]:
        return self.info

    @api.post("/predict", openapi_extra={"requestBody": PREDICT_BODY})
    async def predict(self, request: Request) -> Any:
        limit = self.settings.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit + 64 * 1024:
            return error("body_too_large", f"request body is {int(declared)} bytes; the limit is {limit} bytes")
        if self.predictor is not None and self.predictor.modality == "text":
            return await self._predict_text(request, limit)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return error("not_multipart", "send the image as multipart/form-data in a field named 'file'")
        try:
            form = await request.form(max_files=1, max_fields=8, max_part_size=limit)
        except MultiPartException as exc:
            text = str(exc)
            code = "body_too_large" if "size" in text.lower() or "too large" in text.lower() else "bad_form"
            return error(code, f"could not read the form: {text}")
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return error("missing_file", "the form has no file in the field 'file'")
        data = await upload.read(limit + 1)
        if len(data) > limit:
            return error("body_too_large", f"the file is over the {limit}-byte limit")
        if self.predictor is None:
            return JSONResponse({"error": "not_ready", "detail": "the model is still loading"}, status_code=503)
        try:
            image = decode_image(data, self.predictor.spec)
        except InvalidInputError as exc:
            return error(exc.code, exc.message)
        result = await self._predict_batch(image)
        return {**result, "model": {"name": self.info["name"], "version": self.info["version"]}}

    async def _predict_text(self, request: Request, limit: int) -> Any:
        """JSON {"text": str} or {"texts": [str, ...]}; every text goes through the shared batcher."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return error("not_json", 'this model reads text: send JSON {"text": "..."} with content-type '
                                     f"application/json (got {content_type or 'none'})")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return error("body_too_large", f"request body is over the {limit}-byte limit")
        try:
            doc = json.loads(bytes(body).decode("utf-8"))
        except UnicodeDecodeError as exc:
            return error("bad_encoding", f"the body is not valid UTF-8: {exc.reason} at byte {exc.start}")
        except ValueError as exc:
            return error("bad_json", f"the body is not valid JSON: {exc}")
        if not isinstance(doc, dict) or ("text" in doc) == ("texts" in doc):
            return error("missing_text", 'send an object with either "text" (a string) or "texts" (a list)')
        many = "texts" in doc
        texts = doc["texts"] if many else [doc["text"]]
        if many and not isinstance(texts, list):
            return error("bad_type", f'"texts" must be a list of strings, got {type(texts).__name__}')
        if many and not 1 <= len(texts) <= MAX_TEXTS_PER_REQUEST:
            code = "too_many_texts" if texts else "missing_text"
            return error(code, f'"texts" holds {len(texts)} texts; send 1 to {MAX_TEXTS_PER_REQUEST}')
        try:
            texts = self.predictor.check_batch(texts)
        except InvalidInputError as exc:
            return error(exc.code, exc.message)
        results = await asyncio.gather(*(self._predict_batch(text) for text in texts))
        model = {"name": self.info["name"], "version": self.info["version"]}
        return {"predictions": list(results), "model": model} if many else {**results[0], "model": model}


def build_app(settings: ServerSettings, version: str, *, replicas: int = 2, replica_cpus: float = 0.0):
    """The bound application, ready for `serve.run`."""
    return ModelServer.options(
        num_replicas=replicas,
        user_config={"model_version": version},
        ray_actor_options={"num_cpus": replica_cpus},
    ).bind(settings)
