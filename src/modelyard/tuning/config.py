"""How a search runs: trials, how many at once, the scheduler, the time budget and where each trial trains."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SearchConfig(BaseModel):
    """The settings of one hyper-parameter search (the `hyperparameter-search` form, `modelyard tune`'s options)."""

    model_config = ConfigDict(extra="forbid")

    trials: int = Field(12, ge=1, le=1000, description="Configurations tried (Optuna's TPE sampler proposes each).")
    concurrency: int | Literal["auto"] = Field(
        "auto", description="Trials at once. auto: as many as the cluster's CPUs (or GPUs) hold, "
                            "cpus_per_trial each.")
    cpus_per_trial: int = Field(1, ge=1, le=256, description="CPUs (torch threads) per trial.")
    scheduler: Literal["asha", "fifo"] = Field(
        "asha", description="asha: stop the trials whose validation accuracy trails at each rung (ASHA); "
                            "fifo: every trial runs all its epochs.")
    grace_epochs: int = Field(2, ge=1, description="ASHA: epochs every trial gets before it can be stopped.")
    reduction_factor: int = Field(3, ge=2, description="ASHA: a third (1/factor) of the trials go on at each rung.")
    time_budget_min: float | None = Field(
        45, gt=0, description="Minutes the search may take; then running trials stop and the best so far wins.")
    engine: Literal["auto", "local", "ray_train"] = Field(
        "auto", description="local: each trial runs the Ray Train worker's code inside its Tune trial (one worker, "
                            "no start-up cost); ray_train: each trial launches a TorchTrainer (several workers, "
                            "22-26 s start-up each). auto: ray_train when train.num_workers is above 1.")
    seed: int = Field(42, description="Seed of the sampler (each trial trains with the run's train.seed).")
