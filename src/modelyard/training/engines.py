"""Which engine steps a worker's epochs: `train.engine` torch (`worker.WorkerRun`, modelyard's own loop) or
lightning (`lightning.LightningWorkerRun`, imported only when asked for)."""

from __future__ import annotations

from modelyard.training.worker import Session, WorkerConfig, WorkerRun


def run_worker(config: WorkerConfig, session: Session) -> None:
    """One worker's training (see `modelyard.training.worker`), by the engine `config.train.engine` names."""
    if config.train.engine == "lightning":
        from modelyard.training.lightning import LightningWorkerRun

        LightningWorkerRun(config, session).run()
    else:
        WorkerRun(config, session).run()
