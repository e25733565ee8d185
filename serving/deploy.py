"""Deploy (or roll) the serving application onto a running Ray cluster, or a local Ray in tests."""

from __future__ import annotations

import logging
import time
import urllib.request
from typing import Any

from ray import serve

from modelyard import registry
from modelyard.config import RegistryConfig, ServeConfig
from modelyard.runtime import connect_ray
from serving.app import ServerSettings, build_app

log = logging.getLogger(__name__)

APP_NAME = "modelyard"


def deploy(serve_cfg: ServeConfig, registry_cfg: RegistryConfig, *, model_name: str, tracking_uri: str | None = None,
           ray_address: str | None = None, timeout_s: float = 180.0) -> dict[str, Any]:
    """Serve `models:/<model_name>@champion` on serve_cfg.host:port; returns the URL and version served.

    Redeploying after a promotion changes only the replicas' user_config, so running replicas load the
    new version in place (Serve's lightweight update) and keep answering meanwhile.
    """
    tracking_uri = tracking_uri or registry_cfg.resolved_tracking_uri()
    champion = registry.get_version(tracking_uri, model_name, alias=registry_cfg.champion_alias)
    if champion is None:
        raise LookupError(f"no '{registry_cfg.champion_alias}' version of '{model_name}' to serve")
    connect_ray(ray_address, object_store_bytes=300 * 1024**2)
    serve.start(http_options={"host": serve_cfg.host, "port": serve_cfg.port})
    settings = ServerSettings(
        tracking_uri=tracking_uri, model_name=model_name, alias=registry_cfg.champion_alias,
        max_upload_bytes=serve_cfg.max_upload_bytes, max_batch_size=serve_cfg.max_batch_size,
        batch_wait_timeout_s=serve_cfg.batch_wait_timeout_s,
    )
    app = build_app(settings, champion.version, replicas=serve_cfg.replicas, replica_cpus=serve_cfg.replica_cpus)
    serve.run(app, name=APP_NAME, route_prefix=serve_cfg.route_prefix, blocking=False)
    url = f"http://{serve_cfg.host}:{serve_cfg.port}{serve_cfg.route_prefix.rstrip('/')}"
    wait_for_version(url, champion.version, timeout_s)
    log.info("serving %s v%s at %s", model_name, champion.version, url)
    return {"url": url, "name": model_name, "version": champion.version}


def wait_for_version(url: str, version: str, timeout_s: float) -> None:
    """Poll /model until the served version is `version` (every replica reconfigured answers it)."""
    import json

    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/model", timeout=5) as resp:
                last = json.loads(resp.read())
            if str(last.get("version")) == str(version):
                return
        except OSError as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not serve version {version} within {timeout_s:.0f} s (last answer: {last})")
