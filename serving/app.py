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
import hmac
import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from modelyard import registry
from modelyard.data.text import MAX_TEXT_CHARS
from modelyard.inference.predictor import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, InvalidInputError, Predictor

log = logging.getLogger("modelyard.serving")

STATUS_BY_CODE = {
    "empty_file": 400,
    "not_an_image": 415,
    "not_multipart": 415,
    "image_too_small": 422,
    "image_too_large": 413,
    "missing_file": 422,
    "body_too_large": 413,
    "body_too_slow": 408,
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
    "not_ready": 503,
    "unexpected_field": 422,
}
MAX_TEXTS_PER_REQUEST = 64
TEXT_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_CHARS, "pattern": r"\S"}
IMAGE_BODY = {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "additionalProperties": False,
    "properties": {"file": {"type": "string", "format": "binary", "minLength": 1, "description": (
        f"a PNG, JPEG, BMP, GIF, TIFF or WebP image, gray or colour, each side at least {MIN_IMAGE_SIDE} px and "
        f"at most {MAX_IMAGE_PIXELS:,} pixels; it is resized to what the model was trained on")}}}}}
TEXT_BODY = {"application/json": {"schema": {"oneOf": [
    {"type": "object", "required": ["text"], "properties": {"text": TEXT_SCHEMA}},
    {"type": "object", "required": ["texts"], "properties": {"texts": {
        "type": "array", "items": TEXT_SCHEMA, "minItems": 1, "maxItems": MAX_TEXTS_PER_REQUEST}}},
]}}}
PREDICT_BODY = {"required": True, "content": {**IMAGE_BODY, **TEXT_BODY}}


@dataclass(frozen=True)
class ServerSettings:
    tracking_uri: str
    model_name: str
    alias: str = "champion"
    challenger_alias: str = "challenger"
    max_upload_bytes: int = 4 * 1024 * 1024
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.0
    threads: int = 1  # torch (or ONNX Runtime) threads in each replica
    backend: str = "torch"  # torch | onnxruntime
    canary_share: float = 0.0
    canary_mode: str = "split"  # split | mirror
    follow_aliases_s: float = 5.0
    auth_token: str | None = None  # when set, every route but /health wants `Authorization: Bearer <token>`
    # A body not complete within this many seconds of the request reaching the replica gets 408 (a client
    # trickling its upload would otherwise hold a replica's slot; Serve's own timeout can be switched off by
    # any client with a header).
    body_timeout_s: float = 10.0


def error(code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=STATUS_BY_CODE.get(code, 400))


ERROR_BODY = {"application/json": {"schema": {
    "type": "object", "required": ["error", "detail"],
    "properties": {"error": {"type": "string", "description": "a stable code, e.g. not_an_image"},
                   "detail": {"type": "string", "description": "what was wrong, for a person"}}}}}
AUTH_ERROR = {401: {"description": "no or wrong bearer token (only when the server has one)", "content": ERROR_BODY}}
PREDICT_ERRORS = {
    400: {"description": "unreadable body: empty file, broken form, invalid JSON or UTF-8", "content": ERROR_BODY},
    408: {"description": "the body did not arrive in time (a client sending too slowly)", "content": ERROR_BODY},
    413: {"description": "body, file or text over the limits in the summary", "content": ERROR_BODY},
    415: {"description": "wrong content type, or a file that is not an image", "content": ERROR_BODY},
    422: {"description": "well-formed but unusable: no file/text, wrong types, blank text, tiny image",
          "content": ERROR_BODY},
    503: {"description": "the model is still loading", "content": ERROR_BODY},
    **AUTH_ERROR,
}


api = FastAPI(
    title="modelyard",
    description="Predictions from the promoted (champion) model in the MLflow registry.",
    version="1",
)


def unauthorized(request: Request, token: str | None) -> JSONResponse | None:
    """The 401 answer when a token is configured and the request does not carry it; None otherwise."""
    if token and not hmac.compare_digest(request.headers.get("authorization", "").encode(), f"Bearer {token}".encode()):
        return JSONResponse({"error": "unauthorized", "detail": "send the header 'Authorization: Bearer <token>'"},
                            status_code=401, headers={"WWW-Authenticate": "Bearer"})
    return None


async def _timed(awaitable: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = await awaitable
    return result, (time.perf_counter() - start) * 1e3


def document_for(app: FastAPI, modality: str, settings: ServerSettings) -> None:
    """Make this replica's /openapi.json describe the body its model reads (images or texts) and its limits.

    Every task runs the same ingress, and each replica holds its own copy of the FastAPI app (Serve freezes
    one per deployment), so the schema is replaced here once the replica knows what its model reads.
    """
    from fastapi.openapi.utils import get_openapi

    body = {"required": True, "content": IMAGE_BODY if modality == "image" else TEXT_BODY}
    limit = f"Bodies over {settings.max_upload_bytes:,} bytes get 413."
    if modality == "text":
        limit += f" 1 to {MAX_TEXTS_PER_REQUEST} texts of at most {MAX_TEXT_CHARS:,} characters each."
    schema = get_openapi(title=app.title, version=app.version, description=f"{app.description} {limit}",
                         routes=app.routes)
    schema["paths"]["/predict"]["post"]["requestBody"] = body
    if settings.auth_token:
        schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
        schema["paths"]["/health"]["get"]["security"] = []
    app.openapi = lambda: schema  # FastAPI's documented way to extend its schema


@ray.remote(num_cpus=0)
class TrafficStats:
    """Requests, latency and champion/challenger agreement per model version, summed over an app's replicas."""

    def __init__(self) -> None:
        self.versions: dict[str, dict[str, Any]] = {}
        self.replicas: dict[str, tuple[str | None, float]] = {}  # replica -> (version it serves, when told)

    def add(self, replica: str, serving: str | None, deltas: dict[str, dict[str, Any]]) -> None:
        self.replicas[replica] = (serving, time.monotonic())
        for version, d in deltas.items():
            v = self.versions.setdefault(version, {"requests": 0, "latencies_ms": [], "compared": 0, "agreed": 0})
            v["requests"] += d["requests"]
            v["compared"] += d["compared"]
            v["agreed"] += d["agreed"]
            v["latencies_ms"] = (v["latencies_ms"] + d["latencies_ms"])[-4096:]

    def serving(self) -> dict[str, str | None]:
        """The version each live replica serves (replicas report every second)."""
        now = time.monotonic()
        return {r: v for r, (v, at) in sorted(self.replicas.items()) if now - at < 3.0}

    def summary(self) -> dict[str, Any]:
        out = {}
        for version, v in self.versions.items():
            lat = sorted(v["latencies_ms"])
            out[version] = {
                "requests": v["requests"],
                "p50_ms": round(lat[len(lat) // 2], 2) if lat else None,
                "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2) if lat else None,
                "compared_with_champion": v["compared"],
                "agreement": round(v["agreed"] / v["compared"], 4) if v["compared"] else None,
            }
        return out


@dataclass
class Loaded:
    """One model version in memory and what /model says about it."""

    predictor: Predictor
    info: dict[str, Any]

    @property
    def version(self) -> str:
        return self.info["version"]

    def prepare(self, raw: list[Any]) -> list[Any]:
        """A request's inputs as the batcher's items: each image's bytes decoded, or the texts checked together
        (raises InvalidInputError)."""
        if self.predictor.modality == "text":
            return self.predictor.check_batch(raw)
        return [self.predictor.decode(item) for item in raw]


@serve.deployment(name="ModelServer", max_ongoing_requests=64, health_check_period_s=5)
@serve.ingress(api)
class ModelServer:
    def __init__(self, settings: ServerSettings) -> None:
        import torch

        torch.set_num_threads(settings.threads)  # replicas share the machine's cores (see deploy)
        self.settings = settings
        self.champion: Loaded | None = None
        self.challenger: Loaded | None = None
        self._lock = threading.Lock()  # reconfigure and the alias follower both load versions
        self._pending: dict[str, dict[str, Any]] = {}
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        self._stats = TrafficStats.options(
            name=f"modelyard-traffic-{settings.model_name}", namespace="modelyard", get_if_exists=True,
            lifetime="detached").remote()
        for method in (self._champion_batch, self._challenger_batch):
            method.set_max_batch_size(settings.max_batch_size)
            method.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self._stop = threading.Event()
        threading.Thread(target=self._follow, name="alias-follower", daemon=True).start()

    # ---- which versions are loaded ---------------------------------------------------------------

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Load the versions named in the deployment's user_config (set by `deploy`).

        A new champion is rolled out by redeploying with a new version here: Serve calls this on running
        replicas, which keep answering with the old model until the new one has loaded.
        """
        self._use(str(user_config["model_version"]), user_config.get("challenger_version"))

    def _use(self, champion: str, challenger: str | None) -> None:
        with self._lock:
            if self.champion is None or self.champion.version != champion:
                self.champion = self._load(champion)
                log.warning("serving %s v%s", self.settings.model_name, champion)
                document_for(getattr(self, "_asgi_app", api), self.champion.predictor.modality, self.settings)
            if not challenger or str(challenger) == champion or self.settings.canary_share <= 0:
                self.challenger = None
            elif self.challenger is None or self.challenger.version != str(challenger):
                self.challenger = self._load(str(challenger))

    def _load(self, version: str) -> Loaded:
        s = self.settings
        with registry.fetched_model_dir(s.tracking_uri, s.model_name, version=version) as (model_dir, mv):
            # weights (and the ONNX session) now in memory; the download is removed after this block
            predictor = Predictor.from_dir(model_dir, backend=s.backend, threads=s.threads)
        run = registry.get_run(s.tracking_uri, mv.run_id) if mv.run_id else {"metrics": {}}
        info = {
            "name": s.model_name,
            "version": mv.version,
            "alias": s.alias,
            "aliases": mv.aliases,
            "run_id": mv.run_id,
            "source": mv.source,
            "labels": predictor.labels,
            "backend": predictor.backend,
            "backend_note": predictor.backend_note,
            "test_metrics": {k.removeprefix("test/"): v for k, v in run["metrics"].items()
                             if k.startswith("test/") and "/f1/" not in k},
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return Loaded(predictor, info)

    def _follow(self) -> None:
        """Each second hand the traffic counts over; every follow_aliases_s load what the aliases now name."""
        s = self.settings
        last_check = time.monotonic()
        while not self._stop.wait(1.0):
            self._flush()
            if not s.follow_aliases_s or self.champion is None or time.monotonic() - last_check < s.follow_aliases_s:
                continue
            last_check = time.monotonic()
            try:
                champion = registry.get_version(s.tracking_uri, s.model_name, alias=s.alias)
                challenger = registry.get_version(s.tracking_uri, s.model_name, alias=s.challenger_alias)
                if champion is not None:
                    self._use(champion.version, challenger.version if challenger else None)
            except Exception:  # the registry being away must not take serving down
                log.exception("could not check the registry's aliases for %s", s.model_name)

    def _count(self, version: str, latency_ms: float, agreed: bool | None = None) -> None:
        d = self._pending.setdefault(version, {"requests": 0, "latencies_ms": [], "compared": 0, "agreed": 0})
        d["requests"] += 1
        d["latencies_ms"].append(round(latency_ms, 3))
        if agreed is not None:
            d["compared"] += 1
            d["agreed"] += int(agreed)

    def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        champion = self.champion
        self._stats.add.remote(self._replica_id, champion.version if champion else None, pending)

    def __del__(self) -> None:
        self._stop.set()

    # ---- batched forward passes --------------------------------------------------------------------

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _champion_batch(self, inputs: list[Any]) -> list[dict[str, Any]]:
        return await self._forward(self.champion, inputs)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _challenger_batch(self, inputs: list[Any]) -> list[dict[str, Any]]:
        return await self._forward(self.challenger or self.champion, inputs)

    @staticmethod
    async def _forward(model: Loaded, inputs: list[Any]) -> list[dict[str, Any]]:
        """A batch of decoded images, or of texts, from concurrent requests: one forward pass; each answer
        names the version that computed it."""
        predictor = model.predictor
        batch = list(inputs) if predictor.modality == "text" else np.stack(inputs)
        predictions = await asyncio.to_thread(predictor.predict, batch)
        meta = {"name": model.info["name"], "version": model.version}
        return [{**p.to_dict(), "model": meta} for p in predictions]

    async def _answer(self, raw: list[Any]) -> list[dict[str, Any]]:
        """Answers for a request's inputs (one image, or its texts). A canary share of requests is answered
        by both versions: the challenger's answer is returned (split) or only compared (mirror)."""
        champion, challenger, s = self.champion, self.challenger, self.settings
        start = time.perf_counter()
        prepared = champion.prepare(raw)
        if challenger is None or random.random() >= s.canary_share:
            answers = await asyncio.gather(*(self._champion_batch(x) for x in prepared))
            self._count(answers[0]["model"]["version"], (time.perf_counter() - start) * 1e3)
            return list(answers)
        try:
            other = challenger.prepare(raw)
        except InvalidInputError:
            other = None  # the challenger cannot read this input; the champion answers
        (mine, t_mine), (chal, t_chal) = await asyncio.gather(
            _timed(asyncio.gather(*(self._champion_batch(x) for x in prepared))),
            _timed(asyncio.gather(*(self._challenger_batch(x) for x in other or []))))
        if not chal:
            self._count(mine[0]["model"]["version"], t_mine)
            return list(mine)
        agreed = all(a["index"] == b["index"] for a, b in zip(mine, chal))
        self._count(mine[0]["model"]["version"], t_mine)
        self._count(chal[0]["model"]["version"], t_chal, agreed)
        return list(chal) if s.canary_mode == "split" else list(mine)

    # ---- routes --------------------------------------------------------------------------------------

    def _unauthorized(self, request: Request) -> JSONResponse | None:
        return unauthorized(request, self.settings.auth_token)

    @api.get("/health")
    async def health(self) -> dict[str, Any]:
        champion = self.champion
        return {"status": "ok" if champion else "loading",
                "model": {"name": self.settings.model_name, "version": champion.version if champion else None}}

    @api.get("/model", responses=AUTH_ERROR)
    async def model(self, request: Request) -> Any:
        if denied := self._unauthorized(request):
            return denied
        if self.champion is None:
            return error("not_ready", "the model is still loading")
        self._flush()
        traffic, replicas = await asyncio.gather(self._stats.summary.remote(), self._stats.serving.remote())
        challenger = self.challenger
        return {**self.champion.info,
                "challenger": challenger.info if challenger else None,
                "canary": {"share": self.settings.canary_share if challenger else 0.0, "mode": self.settings.canary_mode},
                "traffic": traffic,
                "replicas": replicas}

    @api.post("/predict", openapi_extra={"requestBody": PREDICT_BODY}, responses=PREDICT_ERRORS,
              summary=f"Classify one image (multipart `file`) or 1 to {MAX_TEXTS_PER_REQUEST} texts (JSON)")
    async def predict(self, request: Request) -> Any:
        if denied := self._unauthorized(request):
            return denied
        limit = self.settings.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit + 64 * 1024:
            return error("body_too_large", f"request body is {int(declared)} bytes; the limit is {limit} bytes")
        if self.champion is None:
            return error("not_ready", "the model is still loading")
        if self.champion.predictor.modality == "text":
            return await self._predict_text(request, limit)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return error("not_multipart", "send the image as multipart/form-data in a field named 'file'")
        body = await self._read_body(request, limit + 64 * 1024)  # the file plus the form's framing
        if isinstance(body, JSONResponse):
            return body

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=8, max_part_size=limit)
        except (MultiPartException, HTTPException) as exc:  # Starlette turns form errors into HTTPException
            text = str(getattr(exc, "detail", None) or exc)
            code = "body_too_large" if "size" in text.lower() or "too large" in text.lower() else "bad_form"
            return error(code, f"could not read the form: {text}")
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return error("missing_file", "the form has no file in the field 'file'")
        if others := sorted(set(form.keys()) - {"file"}):
            return error("unexpected_field", f"the form holds only 'file'; remove {', '.join(map(repr, others[:5]))}")
        data = await upload.read(limit + 1)
        if len(data) > limit:
            return error("body_too_large", f"the file is over the {limit}-byte limit")
        try:
            (answer,) = await self._answer([data])
        except InvalidInputError as exc:
            return error(exc.code, exc.message)
        return answer

    async def _read_body(self, request: Request, cap: int) -> bytes | JSONResponse:
        """The whole body, refused once it passes `cap` bytes (a chunked upload declares no length) or when it
        has not all arrived within `body_timeout_s`."""
        body = bytearray()

        async def read() -> bool:
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > cap:
                    return False
            return True

        timeout = self.settings.body_timeout_s
        try:
            complete = await asyncio.wait_for(read(), timeout)
        except TimeoutError:
            return error("body_too_slow", f"the request body did not arrive within {timeout:g} s "
                                          f"({len(body)} bytes came)")
        if not complete:
            return error("body_too_large", f"request body is over the {cap}-byte limit")
        return bytes(body)

    async def _predict_text(self, request: Request, limit: int) -> Any:
        """JSON {"text": str} or {"texts": [str, ...]}; every text goes through the shared batcher."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return error("not_json", 'this model reads text: send JSON {"text": "..."} with content-type '
                                     f"application/json (got {content_type or 'none'})")
        body = await self._read_body(request, limit)
        if isinstance(body, JSONResponse):
            return body
        try:
            doc = json.loads(body.decode("utf-8"))
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
            answers = await self._answer(texts)
        except InvalidInputError as exc:
            return error(exc.code, exc.message)
        if not many:
            return answers[0]
        model = answers[0]["model"]
        return {"predictions": [{k: v for k, v in a.items() if k != "model"} for a in answers], "model": model}


def build_app(settings: ServerSettings, version: str, *, challenger: str | None = None, replicas: int = 2,
              replica_cpus: float = 0.0, autoscaling: dict[str, Any] | None = None, access_log: bool = False):
    """The bound application, ready for `serve.run`: a fixed number of replicas, or autoscaling between
    `autoscaling["min_replicas"]` and `["max_replicas"]`."""
    scale = {"autoscaling_config": autoscaling} if autoscaling else {"num_replicas": replicas}
    return ModelServer.options(
        **scale,
        user_config={"model_version": version, "challenger_version": challenger},
        ray_actor_options={"num_cpus": replica_cpus},
        # A log line per request costs the replica more CPU than routing it; errors are still logged.
        logging_config={"enable_access_log": access_log, "log_level": "INFO" if access_log else "WARNING"},
    ).bind(settings)


index_api = FastAPI(title="modelyard", description="The tasks this cluster serves, one application each.",
                    version="1")


@serve.deployment(name="Index", num_replicas=1, ray_actor_options={"num_cpus": 0},
                  logging_config={"enable_access_log": False})
@serve.ingress(index_api)
class Index:
    """`GET /`: every served task with its route and the model version it answers with (set by `deploy`)."""

    def __init__(self, auth_token: str | None = None) -> None:
        self.apps: list[dict[str, Any]] = []
        self.auth_token = auth_token

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.apps = list(user_config.get("apps", []))

    @index_api.get("/", responses=AUTH_ERROR)
    async def index(self, request: Request) -> Any:
        if denied := unauthorized(request, self.auth_token):
            return denied
        return {"apps": self.apps}

    @index_api.get("/health")
    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "apps": len(self.apps)}


def build_index(apps: list[dict[str, Any]], auth_token: str | None = None):
    return Index.options(user_config={"apps": apps}).bind(auth_token)
