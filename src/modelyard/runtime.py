"""Process setup that entry points call explicitly: telemetry off, logging on. Nothing runs at import."""

from __future__ import annotations

import logging
import os

# Every tool in the stack phones home unless told not to; the project's own environment tells them.
TELEMETRY_OFF = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GX_ANALYTICS_ENABLED": "false",
    # onnxruntime (1.32) writes a device id and an event store under ~/.cache/Microsoft at import, unless
    # this is set or it finds a CI's variables.
    "ORT_DISABLE_TELEMETRY": "1",
}
# No model hub is reachable from the machines this runs on; fail fast instead of retrying for 25 s.
OFFLINE_DEFAULTS = {"HF_HUB_OFFLINE": "1"}
# MLflow draws a progress bar for every artifact download: a serving replica's log filled with them at each
# start and at each version it loads.
QUIET = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
# Ray's metrics collection (its agents sampling every process for Prometheus) takes a noticeable share of a
# small machine's cores from training (`make bench` measures it). Set RAY_enable_metrics_collection=1 where a
# cluster has cores to spare and a Prometheus.
#
# Ray Train's controller takes a worker's report (metrics, checkpoint) only when it polls the workers, every
# 2 s by default, and a worker's next report waits until it has: a task whose epoch takes a tenth of a second
# (JapaneseVowels) trained at one epoch per 2 s. Ray Train passes this variable on to its controller.
RAY_DEFAULTS = {"RAY_enable_metrics_collection": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}


def configure_environment() -> None:
    """Switch telemetry off for this process and its children (values already set are kept).

    Call before Ray is imported: when no remote Ray cluster is named, a Ray started here is kept on
    127.0.0.1 (Ray reads this switch at import; by default it binds a routable address on all interfaces),
    and asks for a token of its own (`private_ray_token`).
    """
    for key, value in {**TELEMETRY_OFF, **OFFLINE_DEFAULTS, **QUIET, **RAY_DEFAULTS}.items():
        os.environ.setdefault(key, value)
    address = os.environ.get("RAY_ADDRESS", "")
    if not address or address.startswith(("127.0.0.1", "localhost")):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if not address:
        private_ray_token()


def configure_logging(level: int | str = logging.INFO) -> None:
    """Plain, timestamped logs on stderr for entry points."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("alembic", "urllib3", "filelock", "great_expectations", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def connect_ray(address: str | None = None, object_store_bytes: int = 500 * 1024**2) -> None:
    """Join the Ray cluster at `address` (or $RAY_ADDRESS); otherwise start a private local Ray.

    `address="local"` matters: a bare `ray.init()` would attach to whatever cluster the last `ray start`
    on this machine recorded in /tmp/ray, even a stopped one. The dashboard stays on (127.0.0.1, 8265 or
    the next free port): Ray Train's placement-group cleaner needs the State API it serves.

    A private Ray asks for a token like the stack's: a fresh one in this process's environment (which Ray's
    processes inherit), written nowhere, so no other process or user of the machine can reach it.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        private_ray_token()  # before Ray is imported: it reads the mode then
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
    else:
        ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
                 object_store_memory=object_store_bytes)


def private_ray_token() -> None:
    """Token auth for a Ray this process starts: a new token in the environment unless one is given (the
    stack's, in $RAY_AUTH_TOKEN_PATH or $RAY_AUTH_TOKEN)."""
    import secrets

    os.environ["RAY_AUTH_MODE"] = "token"
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def process_owner() -> str:
    """This process as `host:pid:start time`: what a run or a lock records of whoever holds it."""
    import socket

    import psutil

    proc = psutil.Process()
    return f"{socket.gethostname()}:{proc.pid}:{proc.create_time():.2f}"


def owner_alive(owner: str) -> bool | None:
    """Whether the process a `process_owner()` string names is still running: the same pid *and* start time,
    so a reused pid does not count. None when it ran on another host (only that host can tell) or the string
    names no process."""
    import socket

    import psutil

    host, _, rest = owner.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        return f"{psutil.Process(int(pid)).create_time():.2f}" == started
    except psutil.Error:
        return False
