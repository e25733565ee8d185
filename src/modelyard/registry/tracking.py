"""MLflow runs: create one, log to it, hand it from stage to stage, and fail the ones whose process died."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.registry.store import artifact_root_for, client
from modelyard.runtime import owner_alive, process_owner

log = logging.getLogger(__name__)

OWNER_TAG = "modelyard.owner"  # host:pid:start time of the process working on a RUNNING run


def ensure_experiment(tracking_uri: str, name: str) -> str:
    mlflow = client(tracking_uri)
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = artifact_root_for(tracking_uri)
    return mlflow.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)


def start_run(tracking_uri: str, experiment: str, params: dict[str, Any], tags: dict[str, str] | None = None,
              run_name: str | None = None) -> str:
    """Create a run (left RUNNING for later stages to add to) and log its params; returns the run id."""
    from mlflow.entities import RunTag

    mlflow = client(tracking_uri)
    run = mlflow.create_run(ensure_experiment(tracking_uri, experiment), run_name=run_name, tags=tags or {})
    log_params(tracking_uri, run.info.run_id, params)
    if tags:
        mlflow.log_batch(run.info.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    return run.info.run_id


def log_params(tracking_uri: str, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client(tracking_uri).log_batch(run_id, params=items[i : i + 100])


def log_metrics(tracking_uri: str, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if isinstance(v, (int, float))]
    client(tracking_uri).log_batch(run_id, metrics=items)


def logged_steps(tracking_uri: str, run_id: str, key: str) -> set[int]:
    """The steps at which the run has a value of metric `key`."""
    return {m.step for m in client(tracking_uri).get_metric_history(run_id, key)}


def set_tags(tracking_uri: str, run_id: str, tags: dict[str, Any]) -> None:
    from mlflow.entities import RunTag

    client(tracking_uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_artifacts(tracking_uri: str, run_id: str, local_path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
    mlflow, local_path = client(tracking_uri), Path(local_path)
    if local_path.is_dir():
        mlflow.log_artifacts(run_id, str(local_path), artifact_path)
    elif local_path.is_file():
        mlflow.log_artifact(run_id, str(local_path), artifact_path)


CONFIG_ARTIFACT = "config/pipeline.json"


def log_config(tracking_uri: str, run_id: str, cfg: Any) -> None:
    """The run's whole configuration as the artifact `config/pipeline.json` (paths aside: they were this
    machine's), which a retraining of its task starts from (modelyard.monitoring.retraining)."""
    doc = cfg.model_dump(mode="json", by_alias=True, exclude={"paths"})
    client(tracking_uri).log_dict(run_id, doc, CONFIG_ARTIFACT)


def read_config(tracking_uri: str, run_id: str) -> dict[str, Any] | None:
    """What `log_config` logged for the run; None for a run without it."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="modelyard-config-") as tmp:
        try:
            path = client(tracking_uri).download_artifacts(run_id, CONFIG_ARTIFACT, tmp)
        except Exception:  # a run from before the config was logged, or artifacts not reachable from here
            return None
        return json.loads(Path(path).read_text())


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(tracking_uri).set_terminated(run_id, status=status)


def get_run(tracking_uri: str, run_id: str) -> dict[str, Any]:
    run = client(tracking_uri).get_run(run_id)
    return {"run_id": run_id, "status": run.info.status, "params": dict(run.data.params),
            "metrics": dict(run.data.metrics), "tags": dict(run.data.tags)}


def running_runs(tracking_uri: str, experiment: str, tag: str) -> list[tuple[str, str]]:
    """(run id, value of `tag`) of the experiment's RUNNING runs that carry `tag`."""
    mlflow = client(tracking_uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = mlflow.search_runs([found.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    return [(r.info.run_id, r.data.tags[tag]) for r in runs if tag in r.data.tags]


def series_run(tracking_uri: str, experiment: str, tag: str, value: str, run_name: str) -> str:
    """The run of `experiment` tagged `tag=value`, created (and left RUNNING) the first time: one run that a
    recurring job adds a point to each time (a monitor's drift scores over time)."""
    mlflow = client(tracking_uri)
    experiment_id = ensure_experiment(tracking_uri, experiment)
    found = mlflow.search_runs([experiment_id], filter_string=f"tags.`{tag}` = '{value}'", max_results=1)
    if found:
        return found[0].info.run_id
    return start_run(tracking_uri, experiment, {}, tags={tag: value}, run_name=run_name)


@dataclass(frozen=True)
class RunLogger:
    """One run's metrics and tags, for training's rank 0 (picklable: it travels to the Ray Train workers)."""

    tracking_uri: str
    run_id: str

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        log_metrics(self.tracking_uri, self.run_id, metrics, step=step)

    def set_tags(self, tags: dict[str, Any]) -> None:
        set_tags(self.tracking_uri, self.run_id, tags)

    def logged_steps(self, key: str) -> set[int]:
        return logged_steps(self.tracking_uri, self.run_id, key)


def reap_orphaned_runs(tracking_uri: str, experiment: str) -> list[str]:
    """End FAILED the RUNNING runs whose process on this host is gone (killed, or the machine restarted): a
    process that dies by SIGKILL or power loss never gets to mark its own run. Returns their ids."""
    reaped = []
    for run_id, owner in running_runs(tracking_uri, experiment, OWNER_TAG):
        if owner_alive(owner) is not False:
            continue  # alive, or another machine's run: only that machine can tell whether it is alive
        set_tags(tracking_uri, run_id, {"modelyard.failure": f"its process ({owner}) died while it ran"})
        end_run(tracking_uri, run_id, status="FAILED")
        log.warning("MLflow run %s was left RUNNING by a process that died (%s): marked FAILED", run_id, owner)
        reaped.append(run_id)
    return reaped


def open_training_run(tracking_uri: str, experiment: str, params: dict[str, Any], tags: dict[str, str]) -> str:
    """The pipeline's MLflow run, opened by the train stage and owned by this process (see `claimed_run`);
    runs earlier processes left RUNNING when they died are failed first."""
    reap_orphaned_runs(tracking_uri, experiment)
    return start_run(tracking_uri, experiment, params=params, tags=tags | {OWNER_TAG: process_owner()})


def hand_on(tracking_uri: str, run_id: str) -> None:
    """Leave the run RUNNING, owned by nobody, for the next stage to claim."""
    set_tags(tracking_uri, run_id, {OWNER_TAG: ""})


@contextmanager
def claimed_run(tracking_uri: str, run_id: str | None) -> Iterator[bool]:
    """A stage after training works on the training's run: it claims the run (its process in the owner tag, so a
    death of the process is found by the next training), ends it FAILED if the stage fails, and hands it on
    when it succeeds. A run that has already ended (an earlier, complete pipeline's) is left as it is. Yields
    whether the run was claimed."""

    def running() -> bool:
        try:
            return bool(run_id) and get_run(tracking_uri, run_id)["status"] == "RUNNING"
        except Exception as exc:  # no tracking server: the stage itself will say so
            log.debug("could not read MLflow run %s: %s", run_id, exc)
            return False

    claimed = running()
    if claimed:
        set_tags(tracking_uri, run_id, {OWNER_TAG: process_owner()})
    try:
        yield claimed
    except BaseException:
        try:
            if running():
                end_run(tracking_uri, run_id, status="FAILED")
                log.error("marked MLflow run %s FAILED", run_id)
        except Exception as exc:  # the stage's own error matters more than this one
            log.warning("could not mark MLflow run %s FAILED: %s", run_id, exc)
        raise
    if claimed and running():
        hand_on(tracking_uri, run_id)
