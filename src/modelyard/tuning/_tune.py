"""Ray Tune's side of a search: the Tuner, an ASHA that records whom it stopped, and the callback that keeps each
trial's MLflow child run. Imports Ray Tune, so only `run_search` imports it, when a search starts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from modelyard.config import PipelineConfig
from modelyard.registry import tracking
from modelyard.tuning.config import SearchConfig
from modelyard.tuning.records import TRIAL_TAG, TrialRecord
from modelyard.tuning.space import to_tune
from modelyard.tuning.trial import METRIC, TIME_ATTR, run_trial


def build_tuner(cfg: PipelineConfig, space: dict[str, Any], settings: SearchConfig, resources: dict[str, float],
                concurrency: int, storage: Path, tracking_uri: str | None, parent: str | None,
                trial_kwargs: dict[str, Any]) -> tuple[tune.Tuner, TrialRuns]:
    """The Tuner of a search (Optuna's TPE sampler, ASHA unless fifo) and the callback that records its trials."""
    max_epochs = max(_high_ends(space, "train.epochs") or [cfg.train.epochs])
    scheduler = RecordingAsha(time_attr=TIME_ATTR, max_t=max_epochs, grace_period=min(settings.grace_epochs, max_epochs),
                              reduction_factor=settings.reduction_factor) if settings.scheduler == "asha" else None
    runs = TrialRuns(tracking_uri, cfg, parent, scheduler)
    trainable = tune.with_resources(tune.with_parameters(run_trial, **trial_kwargs),
                                    {k.lower(): v for k, v in resources.items()})
    tuner = tune.Tuner(
        trainable, param_space=to_tune(space),
        tune_config=tune.TuneConfig(
            metric=METRIC, mode="max", num_samples=settings.trials, max_concurrent_trials=concurrency,
            search_alg=OptunaSearch(seed=settings.seed), scheduler=scheduler,
            time_budget_s=settings.time_budget_min * 60 if settings.time_budget_min else None),
        run_config=tune.RunConfig(name="tune", storage_path=str(storage), callbacks=[runs], verbose=0))
    return tuner, runs


def _high_ends(space: dict[str, Any], key: str) -> list[int]:
    dist = space.get(key)
    return [int(max(next(iter(dist.values()))))] if dist else []


class RecordingAsha(ASHAScheduler):
    """ASHA that remembers which trials it stopped, and at which epoch (for each trial's record)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stopped: dict[str, int] = {}

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and result.get(TIME_ATTR, 0) < self._max_t:
            self.stopped[trial.trial_id] = int(result[TIME_ATTR])
        return decision


class TrialRuns(tune.Callback):
    """In the search's process: each trial's MLflow child run (its settings as params, each epoch's metrics,
    why it ended) and its record for the report."""

    def __init__(self, tracking_uri: str | None, cfg: PipelineConfig, parent: str | None,
                 scheduler: RecordingAsha | None) -> None:
        self.tracking_uri, self.cfg, self.parent, self.scheduler = tracking_uri, cfg, parent, scheduler
        self.run_ids: dict[str, str] = {}
        self.configs: dict[str, dict[str, Any]] = {}
        self.history: dict[str, list[dict[str, float]]] = {}
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.failed: dict[str, str] = {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started[trial.trial_id] = time.time()
        self.configs[trial.trial_id] = {k: _plain(v) for k, v in trial.config.items()}
        self.history[trial.trial_id] = []
        if self.tracking_uri and self.parent:
            self.run_ids[trial.trial_id] = tracking.start_run(
                self.tracking_uri, self.cfg.registry.experiment, params=dict(self.configs[trial.trial_id]),
                run_name=f"trial-{trial.trial_id}",
                tags={"mlflow.parentRunId": self.parent, "modelyard.stage": "search-trial",
                      TRIAL_TAG: trial.trial_id, "modelyard.task": self.cfg.task_name})

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict[str, Any], **info: Any) -> None:
        metrics = {k: float(v) for k, v in result.items()
                   if "/" in k and isinstance(v, int | float) and not isinstance(v, bool)}
        history = self.history.setdefault(trial.trial_id, [])
        metrics["epoch"] = int(result.get(TIME_ATTR, len(history) + 1))
        history.append(metrics)
        if trial.trial_id in self.run_ids:
            tracking.log_metrics(self.tracking_uri, self.run_ids[trial.trial_id],
                                 {k: v for k, v in metrics.items() if k != "epoch"}, step=metrics["epoch"])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.failed[trial.trial_id] = str(getattr(trial, "error_file", None) or "see the trial's log")
        self._end(trial, "FAILED")

    def _end(self, trial: Any, status: str) -> None:
        self.ended[trial.trial_id] = time.time()
        run_id = self.run_ids.get(trial.trial_id)
        if run_id:
            how, reason = self.status(trial.trial_id)
            tracking.set_tags(self.tracking_uri, run_id, {"modelyard.search.status": how,
                                                          "modelyard.search.stop_reason": reason})
            tracking.end_run(self.tracking_uri, run_id, status=status)

    def status(self, trial_id: str) -> tuple[str, str]:
        """completed | stopped | failed, and why."""
        planned, run = self.planned(trial_id), len(self.history.get(trial_id, []))
        if trial_id in self.failed:
            return "failed", f"failed after {run} epoch(s); error in {self.failed[trial_id]}"
        if run >= planned:
            return "completed", f"ran all {planned} epochs"
        if self.scheduler is not None and trial_id in self.scheduler.stopped:
            return "stopped", (f"stopped by ASHA after epoch {self.scheduler.stopped[trial_id]} of {planned}: its "
                               "validation accuracy trailed the rung's best")
        return "stopped", f"stopped after epoch {run} of {planned}: the search's time budget ran out"

    def planned(self, trial_id: str) -> int:
        return int(self.configs.get(trial_id, {}).get("train.epochs", self.cfg.train.epochs))

    def records(self) -> list[TrialRecord]:
        """Every trial that started, in the order they started."""
        first = min(self.started.values(), default=0.0)
        out = []
        for trial_id, sample in self.configs.items():
            how, reason = self.status(trial_id)
            seconds = self.ended.get(trial_id, time.time()) - self.started[trial_id]
            out.append(TrialRecord(trial_id, sample, self.planned(trial_id), self.history.get(trial_id, []), how,
                                   reason, round(seconds, 1), self.run_ids.get(trial_id),
                                   round(self.started[trial_id] - first, 1)))
        return out


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v
