"""Registered model versions: log one, find one by alias or number, fetch its files, move its aliases back."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.registry.lock import compare_and_set_alias, registry_lock
from modelyard.registry.store import client, using

log = logging.getLogger(__name__)

MODEL_ARTIFACT_NAME = "model"
PREVIOUS_CHAMPION_TAG = "modelyard.previous_champion"


def log_model(tracking_uri: str, run_id: str, model_dir: str | os.PathLike[str], registered_name: str,
              input_example: Any, pip_requirements: list[str]) -> str:
    """Log `model_dir` as an MLflow pyfunc model in `run_id` and register a new version; returns it.

    modelyard's own code is logged with the model (`code/modelyard/`), so `mlflow.pyfunc.load_model` works
    in any environment that has the pip requirements, not only in this project's virtual environment.
    """
    import mlflow
    import mlflow.pyfunc

    import modelyard
    from modelyard.registry.pyfunc import ClassifierModel

    with using(tracking_uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT_NAME,
            python_model=ClassifierModel(),
            artifacts={"model_dir": str(model_dir)},
            input_example=input_example,
            pip_requirements=pip_requirements,
            code_paths=[str(Path(modelyard.__file__).parent)],
            registered_model_name=registered_name,
        )
    version = info.registered_model_version
    if version is None:  # older clients: look it up
        version = latest_version(tracking_uri, registered_name)
    return str(version)


def latest_version(tracking_uri: str, name: str) -> str:
    versions = client(tracking_uri).search_model_versions(f"name='{name}'")
    return str(max(int(v.version) for v in versions))


@dataclass
class ModelVersionInfo:
    name: str
    version: str
    run_id: str
    aliases: list[str]
    tags: dict[str, str]
    source: str
    description: str = ""  # its model card, in markdown (modelyard.registry.card)
    created: float = 0.0  # when it was registered (UTC seconds)


def get_version(tracking_uri: str, name: str, *, alias: str | None = None, version: str | None = None) -> ModelVersionInfo | None:
    """A version by alias or number; None when the alias is not set (or the model does not exist)."""
    from mlflow.exceptions import MlflowException

    registry = client(tracking_uri)
    try:
        mv = registry.get_model_version_by_alias(name, alias) if alias else registry.get_model_version(name, version)
    except MlflowException:
        return None
    return ModelVersionInfo(name=name, version=str(mv.version), run_id=mv.run_id, aliases=list(mv.aliases),
                            tags=dict(mv.tags), source=mv.source, description=mv.description or "",
                            created=(mv.creation_timestamp or 0) / 1000)


def with_alias(tracking_uri: str, alias: str) -> list[ModelVersionInfo]:
    """The version holding `alias` of every registered model that has one, by model name."""
    registry = client(tracking_uri)
    found = []
    for model in registry.search_registered_models(max_results=1000):
        if alias in (model.aliases or {}):
            mv = get_version(tracking_uri, model.name, alias=alias)
            if mv is not None:
                found.append(mv)
    return sorted(found, key=lambda mv: mv.name)


def set_version_tags(tracking_uri: str, name: str, version: str, tags: dict[str, Any]) -> None:
    registry = client(tracking_uri)
    for k, v in tags.items():
        registry.set_model_version_tag(name, version, k, str(v))


def set_version_description(tracking_uri: str, name: str, version: str, description: str) -> None:
    """What the MLflow UI shows on the version's page (markdown)."""
    client(tracking_uri).update_model_version(name, version, description=description)


def set_alias(tracking_uri: str, name: str, alias: str, version: str) -> None:
    client(tracking_uri).set_registered_model_alias(name, alias, version)


def download_model_dir(tracking_uri: str, name: str, *, dst_dir: str | os.PathLike[str], alias: str | None = None,
                       version: str | None = None) -> tuple[Path, ModelVersionInfo]:
    """Fetch `models:/<name>@<alias>` (or a version) into `dst_dir`; returns the modelyard model directory."""
    import mlflow.artifacts

    info = get_version(tracking_uri, name, alias=alias, version=version)
    if info is None:
        what = f"alias '{alias}'" if alias else f"version {version}"
        raise LookupError(f"registered model '{name}' has no {what} at {tracking_uri}")
    with using(tracking_uri):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{info.version}",
                                                         dst_path=str(dst_dir)))
    specs = list(local.rglob("model.json"))
    if not specs:
        raise LookupError(f"models:/{name}/{info.version} holds no modelyard model (no model.json)")
    return specs[0].parent, info


@contextmanager
def fetched_model_dir(tracking_uri: str, name: str, *, alias: str | None = None,
                      version: str | None = None) -> Iterator[tuple[Path, ModelVersionInfo]]:
    """`download_model_dir` into a temporary directory that is removed when the block ends."""
    with tempfile.TemporaryDirectory(prefix="modelyard-model-") as tmp:
        yield download_model_dir(tracking_uri, name, dst_dir=tmp, alias=alias, version=version)


def rollback(tracking_uri: str, name: str, *, champion_alias: str = "champion") -> tuple[str, str]:
    """Move `champion_alias` back to the version it held before the current one; returns (from, to).

    Each promotion records the version it replaced on the new champion (tag `modelyard.previous_champion`),
    so rolling back twice steps back twice. An alias set by hand (MLflow UI) has no such record; then the
    newest earlier version not itself rolled back is taken. The version left is tagged `modelyard.rolled_back`.
    """
    with registry_lock(tracking_uri, name):  # the same lock promotions take
        return _step_back(tracking_uri, name, champion_alias)


def _step_back(tracking_uri: str, name: str, champion_alias: str) -> tuple[str, str]:
    current = get_version(tracking_uri, name, alias=champion_alias)
    if current is None:
        raise LookupError(f"'{name}' has no '{champion_alias}' version to roll back from")
    previous = current.tags.get(PREVIOUS_CHAMPION_TAG)
    if not previous:
        earlier = [int(mv.version) for mv in client(tracking_uri).search_model_versions(f"name = '{name}'")
                   if int(mv.version) < int(current.version) and "modelyard.rolled_back" not in (mv.tags or {})]
        if not earlier:
            raise LookupError(f"'{name}' v{current.version} is the first '{champion_alias}': there is no earlier one")
        previous = str(max(earlier))
    if get_version(tracking_uri, name, version=previous) is None:
        raise LookupError(f"'{name}' v{previous}, the champion before v{current.version}, no longer exists")
    compare_and_set_alias(tracking_uri, name, champion_alias, previous, expected=current.version)
    set_version_tags(tracking_uri, name, current.version, {"modelyard.rolled_back": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return current.version, previous
