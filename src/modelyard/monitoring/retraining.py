"""Retraining without a person: what a training run started by a monitor event does before and after the
pipeline it shares with every other run.

Before: the configuration of the task the event names (the runner's own when it is that task, else the one
the champion's training run logged), the cool-down (a task decided on less than `monitor.retrain.cooldown_min`
ago is skipped), and the newest feedback set (labelled served traffic, modelyard.monitoring.feedback) built,
added to DVC and named in `data.feedback`, so the training split takes its rows. After: the gate's decision
(promoted, or refused and left as the challenger the canary serves a share of), recorded with the event that
caused it as a run of the MLflow experiment `retraining` and as tags on the new version.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from modelyard.config import PipelineConfig

log = logging.getLogger(__name__)

RETRAIN_EXPERIMENT = "retraining"
TASK_TAG = "modelyard.retrain.task"
DECISION_TAG = "modelyard.retrain.decision"
REASON_TAG = "modelyard.retrain.reason"
DECIDED_EVENT = "modelyard.retrain.decided"


class Cause(BaseModel):
    """The event a retraining run answers: what the training deployment's trigger passes as `cause`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: str = Field(pattern=r"^[a-z0-9_.-]{1,100}$", description="The event's name, e.g. modelyard.drift.detected.")
    event_id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,100}$", description="The event's id.")
    task: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", description="The registered model to retrain.")

    def tags(self) -> dict[str, str]:
        return {"modelyard.retrain.event": self.event, "modelyard.retrain.event_id": self.event_id,
                TASK_TAG: self.task}


def task_config(cfg: PipelineConfig, task: str) -> PipelineConfig:
    """The configuration a retraining of `task` starts from: `cfg` (the runner's) when it trains that task,
    else what the champion's training run logged, with the runner's paths, registry, serving and monitor."""
    from modelyard.registry import tracking, versions

    if cfg.task_name == task:
        return cfg
    uri = cfg.registry.resolved_tracking_uri()
    champion = versions.get_version(uri, task, alias=cfg.registry.champion_alias)
    doc = tracking.read_config(uri, champion.run_id) if champion and champion.run_id else None
    if doc is None:
        raise LookupError(f"cannot retrain {task!r}: the runner's parameters train {cfg.task_name}, and {task} has "
                          "no champion whose training run logged its configuration")
    runner = cfg.model_dump(by_alias=True)
    doc |= {k: runner[k] for k in ("paths", "serve", "monitor")}
    doc["registry"] = {**doc["registry"], "tracking_uri": cfg.registry.tracking_uri}
    return PipelineConfig.model_validate(doc)


def _retrainings(tracking_uri: str, task: str, since_s: float | None = None) -> list[Any]:
    """The task's retrainings that hold the cool-down (running or decided; not skipped or failed), started
    since `since_s` (UTC seconds), newest first."""
    from modelyard.registry.store import client

    mlflow = client(tracking_uri)
    experiment = mlflow.get_experiment_by_name(RETRAIN_EXPERIMENT)
    if experiment is None:
        return []
    when = f" and attributes.start_time > {int(since_s * 1000)}" if since_s is not None else ""
    runs = mlflow.search_runs([experiment.experiment_id], max_results=200, order_by=["attributes.start_time DESC"],
                              filter_string=f"tags.`{TASK_TAG}` = '{task}'{when}")
    return [r for r in runs if r.data.tags.get(DECISION_TAG) in ("running", "promoted", "refused")]


def last_retrained(tracking_uri: str, task: str) -> float | None:
    """When the task's newest retraining began (UTC seconds), or None."""
    runs = _retrainings(tracking_uri, task)
    return runs[0].info.start_time / 1000 if runs else None


def cooling_down(cfg: PipelineConfig, task: str, own_run_id: str) -> str | None:
    """Why the retraining of `task` whose run is `own_run_id` (`begin`) may not go on: another began before it
    within the cool-down. Two begun at once: the earlier (by start time, then run id) goes on."""
    minutes = cfg.monitor.retrain.cooldown_min
    if not minutes:
        return None
    runs = _retrainings(cfg.registry.resolved_tracking_uri(), task, since_s=time.time() - minutes * 60 - 60)
    own = next((r for r in runs if r.info.run_id == own_run_id), None)
    key = (own.info.start_time, own_run_id) if own else (int(time.time() * 1000), own_run_id)
    earlier = [r for r in runs if r.info.run_id != own_run_id and (r.info.start_time, r.info.run_id) < key
               and (key[0] - r.info.start_time) / 60000 < minutes]
    if not earlier:
        return None
    last = earlier[0]
    return (f"a retraining of {task} began {(key[0] - last.info.start_time) / 60000:.1f} min before this one (MLflow "
            f"run {last.info.run_id}: {last.data.tags.get(DECISION_TAG)}); the cool-down is {minutes:g} min")


def begin(cfg: PipelineConfig, cause: Cause) -> str:
    """The retraining's run in the `retraining` experiment, marked running (the cool-down counts it from now)."""
    from modelyard.registry import tracking

    return tracking.start_run(cfg.registry.resolved_tracking_uri(), RETRAIN_EXPERIMENT, params={},
                              tags=cause.tags() | {DECISION_TAG: "running"}, run_name=f"retrain {cause.task}")


def failed(cfg: PipelineConfig, run_id: str, error: BaseException) -> None:
    """A retraining that broke off: its run says so (and no longer holds the cool-down)."""
    from modelyard.registry import tracking

    uri = cfg.registry.resolved_tracking_uri()
    tracking.set_tags(uri, run_id, {DECISION_TAG: "failed", REASON_TAG: f"{type(error).__name__}: {error}"[:4000]})
    tracking.end_run(uri, run_id, status="FAILED")


def with_feedback(cfg: PipelineConfig, task: str) -> tuple[PipelineConfig, dict[str, Any] | None]:
    """`cfg` with the task's newest feedback set (built now under `<data_dir>/feedback/<task>` and added to
    DVC) in `data.feedback`; unchanged, with None, when no labelled input is there yet."""
    from modelyard.data.datasets import get_dataset
    from modelyard.monitoring.feedback import build_feedback_set
    from modelyard.versioning import add_to_dvc

    spec = get_dataset(cfg.data.dataset)
    out = Path(cfg.paths.data_dir) / "feedback" / task
    try:
        summary = build_feedback_set(cfg.traffic_dir, task, list(spec.classes), spec.modality, out,
                                     holdout_share=cfg.monitor.retrain.holdout_share)
    except LookupError as err:
        log.warning("%s is retrained without feedback: %s", task, err)
        return cfg, None
    summary["dvc"] = add_to_dvc(out)
    return cfg.with_overrides({"data": {"feedback": summary["path"]}}), summary


@dataclass
class Decision:
    """What became of one retraining request."""

    task: str
    decision: str  # promoted | refused | skipped
    reason: str
    event: str
    event_id: str
    version: str | None = None
    champion_version: str | None = None
    test_accuracy: float | None = None
    champion_accuracy: float | None = None
    feedback_train_rows: int = 0
    feedback_holdout_accuracy: float | None = None
    feedback_holdout_rows: int = 0
    training_run_id: str | None = None
    decided_at: float = 0.0

    def markdown(self) -> str:
        lines = [f"# Retraining of {self.task}: {self.decision}", "",
                 f"Asked for by the event `{self.event}` ({self.event_id}).", "", self.reason, ""]
        if self.version:
            lines += ["| | value |", "|---|---|", f"| new version | {self.version} |",
                      f"| its test accuracy | {_pct(self.test_accuracy)} |",
                      f"| champion | v{self.champion_version}, {_pct(self.champion_accuracy)} |",
                      f"| feedback rows trained on | {self.feedback_train_rows} |",
                      f"| accuracy on the held-out feedback | {_pct(self.feedback_holdout_accuracy)} "
                      f"({self.feedback_holdout_rows} rows) |"]
        return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def decision_of(cause: Cause, registered: dict[str, Any], evaluation: dict[str, Any], training_run_id: str | None,
                feedback: dict[str, Any] | None) -> Decision:
    """The gate's verdict on the retrained version (registration's summary), as a Decision."""
    holdout = evaluation.get("feedback_holdout") or {}
    return Decision(
        task=cause.task, decision="promoted" if registered["promoted"] else "refused", reason=registered["reason"],
        event=cause.event, event_id=cause.event_id, version=str(registered["version"]),
        champion_version=registered.get("champion_version"), test_accuracy=registered.get("challenger_value"),
        champion_accuracy=registered.get("champion_value"),
        feedback_train_rows=int(feedback["train_rows"]) if feedback else 0,
        feedback_holdout_accuracy=holdout.get("accuracy"), feedback_holdout_rows=int(holdout.get("count", 0)),
        training_run_id=training_run_id)


def record(cfg: PipelineConfig, run_id: str, decision: Decision, feedback: dict[str, Any] | None = None) -> None:
    """The decision on the retraining's run (`begin`): tags, metrics, the markdown; and, for a new version, as
    its tags."""
    import tempfile

    from modelyard.registry import tracking, versions

    uri = cfg.registry.resolved_tracking_uri()
    decision.decided_at = time.time()
    tags = Cause(event=decision.event, event_id=decision.event_id, task=decision.task).tags() | {
        DECISION_TAG: decision.decision, REASON_TAG: decision.reason[:4000]}
    if feedback:
        tags |= {"modelyard.feedback.sha256": feedback["sha256"],
                 "modelyard.feedback.dvc_md5": feedback["dvc"].get("md5", "")}
    tracking.set_tags(uri, run_id, tags | {"mlflow.runName": f"retrain {decision.task}: {decision.decision}"})
    tracking.log_params(uri, run_id, {k: v for k, v in asdict(decision).items() if v is not None and k != "reason"})
    metrics = {"test_accuracy": decision.test_accuracy, "champion_accuracy": decision.champion_accuracy,
               "feedback_holdout_accuracy": decision.feedback_holdout_accuracy,
               "feedback_train_rows": decision.feedback_train_rows}
    tracking.log_metrics(uri, run_id, {k: v for k, v in metrics.items() if v is not None})
    with tempfile.TemporaryDirectory(prefix="modelyard-decision-") as tmp:
        (Path(tmp) / "decision.md").write_text(decision.markdown())
        tracking.log_artifacts(uri, run_id, Path(tmp) / "decision.md")
    tracking.end_run(uri, run_id)
    if decision.version:
        versions.set_version_tags(uri, decision.task, decision.version, tags)
    log.info("retraining of %s (%s %s): %s", decision.task, decision.event, decision.event_id, decision.decision)
