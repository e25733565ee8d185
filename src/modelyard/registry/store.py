"""The MLflow client of a tracking URI, and where a local store keeps its files. Nothing is set at import:
every function takes the URI."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def client(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    prepare_local_store(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def prepare_local_store(tracking_uri: str) -> None:
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextmanager
def using(tracking_uri: str) -> Iterator[None]:
    """MLflow's fluent API (log_model, download_artifacts) pointed at `tracking_uri` inside the block, and put
    back as it was after it: mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI to the environment, which
    would otherwise decide every later default of this process (a config with no tracking_uri)."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_state
    from mlflow.tracking._tracking_service import utils as tracking_state

    environment = {name: os.environ.get(name) for name in URI_VARIABLES}
    before = (tracking_state._tracking_uri, registry_state._registry_uri)
    prepare_local_store(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def artifact_root_for(tracking_uri: str) -> str | None:
    """Where a new experiment keeps artifacts: beside a local sqlite store (the folder `make up`'s server serves
    them from, so runs logged with or without the server read the same); the server decides otherwise."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
        return (db.parent / "artifacts").as_uri()
    return None
