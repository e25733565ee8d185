"""One trial of a search: the run's configuration with the sampled settings, trained on the prepared split, each
epoch's metrics reported to Ray Tune (whose scheduler may stop the trial there).

Two engines run the same worker code (modelyard.training.worker):
- `local`: inside the Tune trial's own process, through a session that reports to Tune. One worker, with the
  trial's CPUs as torch threads; no Ray Train start-up (22-26 s a run on 2 cores).
- `ray_train`: the trial launches a TorchTrainer (Ray Train V2's pattern for Tune), whose rank 0 reports pass
  to Tune through `TuneReportCallback`. For trials that need several workers or nodes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelyard.training.worker import LocalSession

METRIC = "val/accuracy"  # what the scheduler and the sampler maximise
TIME_ATTR = "epoch"


class TuneSession(LocalSession):
    """A local worker's session whose reports go to Ray Tune (the scheduler may stop the trial at any report)."""

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        from ray import tune

        tune.report(dict(metrics))


def run_trial(sample: dict[str, Any], *, base: str, dataset_dir: str, prepared_dir: str, engine: str,
              threads: int) -> None:
    """The Tune function of a search (`base`: the run's config as JSON; `sample`: the trial's settings)."""
    import torch

    from modelyard.config import PipelineConfig
    from modelyard.models import family_config
    from modelyard.tuning.space import apply

    cfg = apply(PipelineConfig.model_validate(json.loads(base)), sample)
    family = family_config(cfg.model)
    if engine == "ray_train":
        _run_ray_train(cfg, family, dataset_dir, prepared_dir)
        return
    from modelyard.training.engines import run_worker
    from modelyard.training.job import prepare_job
    from modelyard.training.worker import WorkerConfig, WorkerData

    torch.set_num_threads(threads)
    job = prepare_job(family, cfg.train, dataset_dir, prepared_dir, augment=cfg.prepare.augment)
    config = WorkerConfig(train=cfg.train, family=family, spec=job.spec, policy=job.policy,
                          data=WorkerData(job.arrays, job.train_rows, job.val_rows), init_state=job.init_state,
                          cpus_per_worker=threads)
    run_worker(config, TuneSession("cuda" if cfg.train.use_gpu != "false" and torch.cuda.is_available() else "cpu"))


def _run_ray_train(cfg: Any, family: Any, dataset_dir: str, prepared_dir: str) -> None:
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from modelyard.training.distributed import train

    out = Path(tune.get_context().get_trial_dir()) / "train"
    # Ray is up in this trial's process: the trainer's workers join the search's cluster.
    train(cfg, family, Path(dataset_dir), Path(prepared_dir), out, callbacks=[TuneReportCallback()],
          augment=cfg.prepare.augment)
