"""The MLflow client of a tracking URI, and where a local store keeps its files. Nothing is set at import:
every function takes the URI."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def client(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    prepare_local_store(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def prepare_local_store(tracking_uri: str) -> None:
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def use(tracking_uri: str) -> None:
    """Point MLflow's fluent API (log_model, download_artifacts) at `tracking_uri` for this process."""
    import mlflow

    prepare_local_store(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


def artifact_root_for(tracking_uri: str) -> str | None:
    """Where a new experiment keeps artifacts: beside a local sqlite store (the folder `make up`'s server serves
    them from, so runs logged with or without the server read the same); the server decides otherwise."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
        return (db.parent / "artifacts").as_uri()
    return None
