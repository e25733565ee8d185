"""The only module that talks to MLflow: runs, metrics, artifacts, model versions, aliases.

Every function takes the tracking URI explicitly; nothing is set at import. With the embedded default
(`sqlite:///mlflow/mlflow.db`) artifacts go to `mlflow/artifacts/`, the same place `make up`'s server
serves them from, so runs logged with or without the server read the same.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODEL_ARTIFACT_NAME = "model"


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    _prepare_local_store(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _prepare_local_store(tracking_uri: str) -> None:
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def artifact_root_for(tracking_uri: str) -> str | None:
    """Where a new experiment keeps artifacts: beside a local sqlite store; the server decides otherwise."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
        return (db.parent / "artifacts").as_uri()
    return None


def ensure_experiment(tracking_uri: str, name: str) -> str:
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = artifact_root_for(tracking_uri)
    location = f"{root}/{name}" if root else None
    return client.create_experiment(name, artifact_location=location)


def start_run(tracking_uri: str, experiment: str, params: dict[str, Any], tags: dict[str, str] | None = None,
              run_name: str | None = None) -> str:
    """Create a run (left RUNNING for later stages to add to) and log its params; returns the run id."""
    from mlflow.entities import Param, RunTag

    client = _client(tracking_uri)
    exp_id = ensure_experiment(tracking_uri, experiment)
    run = client.create_run(exp_id, run_name=run_name, tags=tags or {})
    items = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i : i + 100])
    if tags:
        client.log_batch(run.info.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    return run.info.run_id


def log_metrics(tracking_uri: str, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    import time

    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if isinstance(v, (int, float))]
    _client(tracking_uri).log_batch(run_id, metrics=items)


def logged_steps(tracking_uri: str, run_id: str, key: str) -> set[int]:
    """The steps at which the run has a value of metric `key`."""
    return {m.step for m in _client(tracking_uri).get_metric_history(run_id, key)}


def set_tags(tracking_uri: str, run_id: str, tags: dict[str, Any]) -> None:
    from mlflow.entities import RunTag

    _client(tracking_uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_artifacts(tracking_uri: str, run_id: str, local_path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
    client = _client(tracking_uri)
    local_path = Path(local_path)
    if local_path.is_dir():
        client.log_artifacts(run_id, str(local_path), artifact_path)
    elif local_path.is_file():
        client.log_artifact(run_id, str(local_path), artifact_path)


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    _client(tracking_uri).set_terminated(run_id, status=status)


def running_runs(tracking_uri: str, experiment: str, tag: str) -> list[tuple[str, str]]:
    """(run id, value of `tag`) of the experiment's RUNNING runs that carry `tag`."""
    client = _client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    return [(r.info.run_id, r.data.tags[tag]) for r in runs if tag in r.data.tags]


def get_run(tracking_uri: str, run_id: str) -> dict[str, Any]:
    run = _client(tracking_uri).get_run(run_id)
    return {"run_id": run_id, "status": run.info.status, "params": dict(run.data.params),
            "metrics": dict(run.data.metrics), "tags": dict(run.data.tags)}


# ---- models ---------------------------------------------------------------------------------------------

def log_model(tracking_uri: str, run_id: str, model_dir: str | os.PathLike[str], registered_name: str,
              input_example: Any, pip_requirements: list[str]) -> str:
    """Log `model_dir` as an MLflow pyfunc model in `run_id` and register a new version; returns it.

    modelyard's own code is logged with the model (`code/modelyard/`), so `mlflow.pyfunc.load_model` works
    in any environment that has the pip requirements, not only in this project's virtual environment.
    """
    import mlflow.pyfunc

    import mlflow
    import modelyard
    from modelyard.models.artifact import read_spec
    from modelyard.registry.pyfunc import ImageClassifierModel, TextClassifierModel

    python_model = TextClassifierModel() if read_spec(model_dir).modality == "text" else ImageClassifierModel()
    _prepare_local_store(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT_NAME,
            python_model=python_model,
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
    versions = _client(tracking_uri).search_model_versions(f"name='{name}'")
    return str(max(int(v.version) for v in versions))


@dataclass
class ModelVersionInfo:
    name: str
    version: str
    run_id: str
    aliases: list[str]
    tags: dict[str, str]
    source: str


def get_version(tracking_uri: str, name: str, *, alias: str | None = None, version: str | None = None) -> ModelVersionInfo | None:
    """A version by alias or number; None when the alias is not set (or the model does not exist)."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException:
        return None
    return ModelVersionInfo(name=name, version=str(mv.version), run_id=mv.run_id, aliases=list(mv.aliases),
                            tags=dict(mv.tags), source=mv.source)


def with_alias(tracking_uri: str, alias: str) -> list[ModelVersionInfo]:
    """The version holding `alias` of every registered model that has one, by model name."""
    client = _client(tracking_uri)
    found = []
    for model in client.search_registered_models(max_results=1000):
        if alias in (model.aliases or {}):
            mv = get_version(tracking_uri, model.name, alias=alias)
            if mv is not None:
                found.append(mv)
    return sorted(found, key=lambda mv: mv.name)


def set_version_tags(tracking_uri: str, name: str, version: str, tags: dict[str, Any]) -> None:
    client = _client(tracking_uri)
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, str(v))


def set_alias(tracking_uri: str, name: str, alias: str, version: str) -> None:
    _client(tracking_uri).set_registered_model_alias(name, alias, version)


def download_model_dir(tracking_uri: str, name: str, *, dst_dir: str | os.PathLike[str], alias: str | None = None,
                       version: str | None = None) -> tuple[Path, ModelVersionInfo]:
    """Fetch `models:/<name>@<alias>` (or a version) into `dst_dir`; returns the modelyard model directory."""
    import mlflow.artifacts

    info = get_version(tracking_uri, name, alias=alias, version=version)
    if info is None:
        what = f"alias '{alias}'" if alias else f"version {version}"
        raise LookupError(f"registered model '{name}' has no {what} at {tracking_uri}")
    _prepare_local_store(tracking_uri)
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
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


PREVIOUS_CHAMPION_TAG = "modelyard.previous_champion"


def rollback(tracking_uri: str, name: str, *, champion_alias: str = "champion") -> tuple[str, str]:
    """Move `champion_alias` back to the version it held before the current one; returns (from, to).

    Each promotion records the version it replaced on the new champion (tag `modelyard.previous_champion`),
    so rolling back twice steps back twice. An alias set by hand (MLflow UI) has no such record; then the
    newest earlier version not itself rolled back is taken. The version left is tagged `modelyard.rolled_back`.
    """
    current = get_version(tracking_uri, name, alias=champion_alias)
    if current is None:
        raise LookupError(f"'{name}' has no '{champion_alias}' version to roll back from")
    previous = current.tags.get(PREVIOUS_CHAMPION_TAG)
    if not previous:
        earlier = [int(mv.version) for mv in _client(tracking_uri).search_model_versions(f"name = '{name}'")
                   if int(mv.version) < int(current.version) and "modelyard.rolled_back" not in (mv.tags or {})]
        if not earlier:
            raise LookupError(f"'{name}' v{current.version} is the first '{champion_alias}': there is no earlier one")
        previous = str(max(earlier))
    if get_version(tracking_uri, name, version=previous) is None:
        raise LookupError(f"'{name}' v{previous}, the champion before v{current.version}, no longer exists")
    set_alias(tracking_uri, name, champion_alias, previous)
    set_version_tags(tracking_uri, name, current.version, {"modelyard.rolled_back": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return current.version, previous


# ---- promotion ------------------------------------------------------------------------------------------

@dataclass
class PromotionDecision:
    name: str
    version: str
    alias: str  # the alias the new version got
    promoted: bool
    reason: str
    metric: str
    challenger_value: float
    champion_version: str | None = None
    champion_value: float | None = None

    def to_markdown(self) -> str:
        verdict = "promoted to" if self.promoted else "kept as"
        return (f"## Registry\n\n`{self.name}` version **{self.version}** {verdict} `@{self.alias}`: "
                f"{self.reason}\n")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def promote_if_better(
    tracking_uri: str,
    name: str,
    version: str,
    *,
    metric: str,
    value: float,
    test_set_hash: str,
    champion_alias: str = "champion",
    challenger_alias: str = "challenger",
    score_champion: Callable[[Path], float] | None = None,
) -> PromotionDecision:
    """Give `version` the champion alias if there is none or it is at least as good on the same test set.

    The champion's score is its recorded `metric` when it was measured on the same test set (same hash);
    otherwise `score_champion(model_dir)` re-scores it on this test set, so the comparison is always like
    for like. A version that loses becomes the challenger.
    """
    set_version_tags(tracking_uri, name, version, {metric: value, "test_set_sha256": test_set_hash})
    champion = get_version(tracking_uri, name, alias=champion_alias)
    if champion is None or champion.version == version:
        set_alias(tracking_uri, name, champion_alias, version)
        return PromotionDecision(name, version, champion_alias, True, "no champion yet", metric, value)

    if champion.tags.get("test_set_sha256") == test_set_hash and metric in champion.tags:
        champ_value = float(champion.tags[metric])
        basis = "its recorded score on the same test set"
    elif score_champion is not None:
        with fetched_model_dir(tracking_uri, name, version=champion.version) as (model_dir, _):
            champ_value = float(score_champion(model_dir))
        basis = "re-scored on this test set (its own was different)"
    else:
        raise ValueError(f"champion v{champion.version} was scored on another test set and no re-scorer was given")

    if value >= champ_value:
        set_version_tags(tracking_uri, name, version, {PREVIOUS_CHAMPION_TAG: champion.version})
        set_alias(tracking_uri, name, champion_alias, version)
        reason = (f"{metric} {value:.4f} >= champion v{champion.version}'s {champ_value:.4f} ({basis}); "
                  f"v{champion.version} steps down")
        return PromotionDecision(name, version, champion_alias, True, reason, metric, value, champion.version, champ_value)
    set_alias(tracking_uri, name, challenger_alias, version)
    reason = (f"{metric} {value:.4f} < champion v{champion.version}'s {champ_value:.4f} ({basis}); "
              f"champion unchanged")
    return PromotionDecision(name, version, challenger_alias, False, reason, metric, value, champion.version, champ_value)

