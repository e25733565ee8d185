"""The Ray Serve application of one task: a FastAPI ingress over its champion model, batched, on N replicas.

    POST /predict   what the model's modality reads (its codec: an image file in a multipart form, JSON texts,
                    JSON series) -> {"label", "index", "scores", ..., "model": {"name", "version"}}
    GET  /health    {"status": "ok", "model": {...}}
    GET  /model     name, version, run id and test metrics of the version served, its model card ("card":
                    data, metrics per class, ONNX parity, latency, refused inputs, how to call it, lineage;
                    null for versions registered before cards), the canary's challenger, traffic per version,
                    and the version each replica serves
    POST /feedback  {"request_id", "item", "label"} (or {"feedback": [...]}): the true label of an answered
                    input, by the request id its answer came with -> 202 {"accepted": n}; a label that is not
                    one of the model's classes is 422 (modelyard.monitoring.feedback)

What a usable input is and how it becomes the model's is modelyard's (the codec and the Predictor); this
module maps HTTP to them. Bad input gets a 4xx JSON body {"error": <code>, "detail": <message>}.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at runtime.

import asyncio
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from modelyard.inference import InvalidInputError, Predictor
from modelyard.modalities import Codec, Limits
from modelyard.modalities._http import json_object
from modelyard.monitoring.feedback import parse_labels, write_labels
from modelyard.registry import tracking, versions
from modelyard.registry.card import read_card
from serving import placement, protocol
from serving.openapi import AUTH_ERROR, FEEDBACK_BODY_BYTES, FEEDBACK_ERRORS, PREDICT_ERRORS, document
from serving.settings import AppSettings
from serving.traffic import TrafficCounter, TrafficStats
from serving.traffic_log import TrafficLog

log = logging.getLogger("modelyard.serving")

MAX_ITEMS_PER_REQUEST = 64

api = FastAPI(title="modelyard", description="Predictions from the promoted (champion) model in the MLflow registry.",
              version="1")


@dataclass
class Loaded:
    """One model version in memory, the codec of its inputs, and what /model says about it."""

    predictor: Predictor
    codec: Codec
    info: dict[str, Any]

    @property
    def version(self) -> str:
        return self.info["version"]


# Defined before the deployment: @serve.deployment pickles the class as the module is imported, with the
# module-level names it uses that exist by then.
def _readable(model: Loaded, items: list[Any]) -> bool:
    """Whether `model` (a challenger) takes inputs decoded for the champion; if not, the champion answers."""
    try:
        model.predictor.check_batch(model.codec.collate(items))
    except InvalidInputError:
        return False
    return True


async def _timed(awaitable: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = await awaitable
    return result, (time.perf_counter() - start) * 1e3


@serve.deployment(name="ModelServer", max_ongoing_requests=64, health_check_period_s=5)
@serve.ingress(api)
class ModelServer:
    def __init__(self, settings: AppSettings) -> None:
        import torch

        from modelyard.runtime import configure_environment

        configure_environment()  # telemetry and MLflow's download progress bars off in this replica
        torch.set_num_threads(settings.threads)  # replicas share the machine's cores (see deploy)
        self.settings = settings
        self.champion: Loaded | None = None
        self.challenger: Loaded | None = None
        self._lock = threading.Lock()  # reconfigure and the alias follower both load versions
        self._traffic = TrafficCounter()
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        self._placement = placement.PlacementCheck(settings.serve.rebalance_every_s, settings.serve.replica_cpus)
        self._log = TrafficLog(settings.traffic_dir, settings.model_name, self._replica_id,
                               settings.serve.traffic_log.sample,
                               settings.serve.traffic_log.keep_inputs) if settings.traffic_dir else None
        self._stats = TrafficStats.options(
            name=f"modelyard-traffic-{settings.model_name}", namespace="modelyard", get_if_exists=True,
            lifetime="detached").remote()
        for method in (self._champion_batch, self._challenger_batch):
            method.set_max_batch_size(settings.serve.max_batch_size)
            method.set_batch_wait_timeout_s(settings.serve.batch_wait_timeout_s)
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
                if self._log is not None:  # what the log records of each input, off the request's path
                    self._log.describe = self.champion.predictor.preprocessor.describe
                log.warning("serving %s v%s", self.settings.model_name, champion)
                document(getattr(self, "_asgi_app", api), self.champion.codec, bool(self.settings.auth_token),
                         self.champion.predictor.labels, MAX_ITEMS_PER_REQUEST)
            if not challenger or str(challenger) == champion or self.settings.serve.canary.share <= 0:
                self.challenger = None
            elif self.challenger is None or self.challenger.version != str(challenger):
                self.challenger = self._load(str(challenger))

    def _load(self, version: str) -> Loaded:
        s = self.settings
        with versions.fetched_model_dir(s.tracking_uri, s.model_name, version=version) as (model_dir, mv):
            # weights (and the ONNX session) now in memory; the download is removed after this block
            predictor = Predictor.from_dir(model_dir, backend=s.serve.backend, threads=s.threads)
            card = read_card(model_dir, mv.version)  # None for versions registered before model cards
        run = tracking.get_run(s.tracking_uri, mv.run_id) if mv.run_id else {"metrics": {}}
        codec = predictor.spec.modality.codec(predictor.preprocessor,
                                              Limits(s.serve.max_upload_bytes, MAX_ITEMS_PER_REQUEST))
        info = {
            "name": s.model_name, "version": mv.version, "alias": s.registry.champion_alias, "aliases": mv.aliases,
            "run_id": mv.run_id, "source": mv.source, "labels": predictor.labels, "modality": predictor.spec.modality.name,
            "backend": predictor.backend, "backend_note": predictor.backend_note, "card": card,
            "test_metrics": {k.removeprefix("test/"): v for k, v in run["metrics"].items()
                             if k.startswith("test/") and "/f1/" not in k},
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return Loaded(predictor, codec, info)

    def _follow(self) -> None:
        """Each second hand the traffic counts over; every follow_aliases_s load what the aliases now name."""
        s, every = self.settings, self.settings.serve.follow_aliases_s
        last_check = last_log = time.monotonic()
        while not self._stop.wait(1.0):
            self._flush()
            if self._log is not None and time.monotonic() - last_log >= s.serve.traffic_log.flush_every_s:
                last_log = time.monotonic()
                self._log.flush()
            if not every or self.champion is None or time.monotonic() - last_check < every:
                continue
            last_check = time.monotonic()
            try:
                champion = versions.get_version(s.tracking_uri, s.model_name, alias=s.registry.champion_alias)
                challenger = versions.get_version(s.tracking_uri, s.model_name, alias=s.registry.challenger_alias)
                if champion is not None:
                    self._use(champion.version, challenger.version if challenger else None)
            except Exception:  # the registry being away must not take serving down
                log.exception("could not check the registry's aliases for %s", s.model_name)

    async def check_health(self) -> None:
        """Serve's health check (every 5 s); every `rebalance_every_s` it also asks whether this replica should
        move to a node with fewer replicas (serving/placement.py): failing here is how it moves."""
        await self._placement()

    def _flush(self) -> None:
        champion = self.champion
        self._stats.add.remote(self._replica_id, champion.version if champion else None, self._traffic.take())

    def __del__(self) -> None:
        self._stop.set()
        if self._log is not None:
            self._log.flush()

    # ---- batched forward passes --------------------------------------------------------------------

    @serve.batch  # sizes and waits are set from the config in __init__
    async def _champion_batch(self, inputs: list[Any]) -> list[dict[str, Any]]:
        return await self._forward(self.champion, inputs)

    @serve.batch
    async def _challenger_batch(self, inputs: list[Any]) -> list[dict[str, Any]]:
        return await self._forward(self.challenger or self.champion, inputs)

    async def _forward(self, model: Loaded, inputs: list[Any]) -> list[dict[str, Any]]:
        """Inputs from concurrent requests in one forward pass; each answer names the version that computed it
        (and carries its projected embedding, `_embedding`, when the traffic log records it)."""
        collated = model.codec.collate(inputs)
        meta = {"name": model.info["name"], "version": model.version}
        if self._log is None:
            predictions = await asyncio.to_thread(model.predictor.predict, collated)
            return [{**p.to_dict(), "model": meta} for p in predictions]
        predictions, embeddings = await asyncio.to_thread(model.predictor.predict_with_embeddings, collated)
        return [{**p.to_dict(), "model": meta, "_embedding": embeddings[i] if embeddings is not None else None}
                for i, p in enumerate(predictions)]

    async def _answer(self, items: list[Any], request_id: str) -> list[dict[str, Any]]:
        """Answers for a request's inputs, recorded in the traffic log. A canary share of requests is answered
        by both versions: the challenger's answer is returned (split) or only compared (mirror)."""
        challenger, canary = self.challenger, self.settings.serve.canary
        start = time.perf_counter()
        if challenger is None or random.random() >= canary.share or not _readable(challenger, items):
            answers = list(await asyncio.gather(*(self._champion_batch(x) for x in items)))
            latency = (time.perf_counter() - start) * 1e3
            self._traffic.count(answers[0]["model"]["version"], latency)
            return self._recorded(answers, request_id, latency, items)
        (mine, t_mine), (theirs, t_theirs) = await asyncio.gather(
            _timed(asyncio.gather(*(self._champion_batch(x) for x in items))),
            _timed(asyncio.gather(*(self._challenger_batch(x) for x in items))))
        self._traffic.count(mine[0]["model"]["version"], t_mine)
        self._traffic.count(theirs[0]["model"]["version"], t_theirs,
                            agreed=all(a["index"] == b["index"] for a, b in zip(mine, theirs)))
        answered, latency = (list(theirs), t_theirs) if canary.mode == "split" else (list(mine), t_mine)
        return self._recorded(answered, request_id, latency, items)

    def _recorded(self, answers: list[dict[str, Any]], request_id: str, latency_ms: float,
                  items: list[Any]) -> list[dict[str, Any]]:
        """`answers` without their embeddings, which go to the traffic log with the inputs (when this request
        is sampled)."""
        embeddings = [a.pop("_embedding", None) for a in answers]
        if self._log is not None and self._log.wants():
            self._log.add(answers, embeddings, request_id, latency_ms, items)
        return answers

    # ---- routes --------------------------------------------------------------------------------------

    @api.get("/health")
    async def health(self) -> dict[str, Any]:
        champion = self.champion
        return {"status": "ok" if champion else "loading",
                "model": {"name": self.settings.model_name, "version": champion.version if champion else None}}

    @api.get("/model", responses=AUTH_ERROR)
    async def model(self, request: Request) -> Any:
        if denied := protocol.unauthorized(request, self.settings.auth_token):
            return denied
        if self.champion is None:
            return protocol.error("not_ready", "the model is still loading")
        self._flush()
        traffic, replicas = await asyncio.gather(self._stats.summary.remote(), self._stats.serving.remote())
        challenger = self.challenger
        return {**self.champion.info, "challenger": challenger.info if challenger else None,
                "canary": {"share": self.settings.serve.canary.share if challenger else 0.0,
                           "mode": self.settings.serve.canary.mode},
                "traffic": traffic, "replicas": replicas}

    @api.post("/predict", responses=PREDICT_ERRORS, summary="Classify what the model reads (see the request body)")
    async def predict(self, request: Request) -> Any:
        if denied := protocol.unauthorized(request, self.settings.auth_token):
            return denied
        champion = self.champion
        if champion is None:
            return protocol.error("not_ready", "the model is still loading")
        codec, content_type = champion.codec, request.headers.get("content-type", "")
        if too_large := protocol.declared_too_large(request, codec.max_body_bytes):
            return too_large
        try:
            codec.check_content_type(content_type)
            body = await protocol.read_body(request, codec.max_body_bytes, self.settings.serve.body_timeout_s)
            if isinstance(body, JSONResponse):
                return body
            items, many = codec.decode(body, content_type)
            # Serve's ingress (its proxy, or HAProxy) keeps a caller's X-Request-ID or makes one, and returns it.
            request_id = request.headers.get("x-request-id")
            headers = {} if request_id else {"X-Request-ID": (request_id := uuid.uuid4().hex)}
            answered = await self._answer(items, request_id)
            return JSONResponse(protocol.answer(answered, many), headers=headers)
        except InvalidInputError as exc:
            return protocol.error(exc.code, exc.message, codec.statuses)


    @api.post("/feedback", status_code=202, responses=FEEDBACK_ERRORS,
              summary="The true label of an answered input, by its answer's X-Request-ID")
    async def feedback(self, request: Request) -> Any:
        if denied := protocol.unauthorized(request, self.settings.auth_token):
            return denied
        champion = self.champion
        if champion is None:
            return protocol.error("not_ready", "the model is still loading")
        if self.settings.traffic_dir is None:
            return protocol.error("no_traffic_log", "this server keeps no traffic log to join labels with",
                                  {"no_traffic_log": 409})
        if too_large := protocol.declared_too_large(request, FEEDBACK_BODY_BYTES):
            return too_large
        statuses = {"not_json": 415, "bad_encoding": 400, "bad_json": 400, "invalid_feedback": 422,
                    "unknown_label": 422, "not_recorded": 503}
        try:
            content_type = request.headers.get("content-type", "")
            json_object(b"{}", content_type, "labels as JSON")  # the content type, before reading the body
            body = await protocol.read_body(request, FEEDBACK_BODY_BYTES, self.settings.serve.body_timeout_s)
            if isinstance(body, JSONResponse):
                return body
            doc = json_object(body, content_type, "labels as JSON")
            records = parse_labels(doc, champion.predictor.labels, champion.version, MAX_ITEMS_PER_REQUEST)
        except InvalidInputError as exc:
            return protocol.error(exc.code, exc.message, statuses)
        try:
            await asyncio.to_thread(write_labels, self.settings.traffic_dir, self.settings.model_name, records,
                                    self._replica_id)
        except OSError as exc:  # a full or unreachable disk: nothing was recorded, and the caller may retry
            log.exception("could not record %d labels of %s", len(records), self.settings.model_name)
            return protocol.error("not_recorded", f"the labels were not recorded ({exc.strerror or exc}); try again",
                                  statuses)
        return JSONResponse({"accepted": len(records), "task": self.settings.model_name}, status_code=202)


def build_app(settings: AppSettings, version: str, *, challenger: str | None = None):
    """The bound application, ready for `serve.run`: a fixed number of replicas, or autoscaling between
    `serve.autoscaling.min_replicas` and `max_replicas`."""
    cfg = settings.serve
    scale = {"autoscaling_config": cfg.autoscaling.model_dump()} if cfg.autoscaling else {"num_replicas": cfg.replicas}
    return ModelServer.options(
        **scale,
        user_config={"model_version": version, "challenger_version": challenger},
        ray_actor_options={"num_cpus": cfg.replica_cpus},
        # A log line per request costs the replica more CPU than routing it; errors are still logged.
        logging_config={"enable_access_log": cfg.access_log, "log_level": "INFO" if cfg.access_log else "WARNING"},
    ).bind(settings)
