"""The Ray Train worker's code in one process, without Ray: for benchmarks, device checks and quick looks.

    model, spec, history, seconds = train_local(cfg, family, dataset_dir, prepared_dir, device="cuda")

Exactly `engines.run_worker` (same job preparation, batch adapters, loop, checkpoints in memory), so a figure
measured here is the pipeline's training minus Ray's fixed start-up cost.
"""

from __future__ import annotations

import os
import time

import torch

from modelyard.artifact import ModelSpec
from modelyard.config import PipelineConfig
from modelyard.models import FamilyConfig
from modelyard.training.engines import run_worker
from modelyard.training.job import prepare_job
from modelyard.training.worker import CheckpointState, LocalSession, WorkerConfig, WorkerData


def train_local(cfg: PipelineConfig, family: FamilyConfig, dataset_dir: str | os.PathLike[str],
                prepared_dir: str | os.PathLike[str], device: str | torch.device = "cpu", threads: int | None = None,
                session: LocalSession | None = None) -> tuple[torch.nn.Module, ModelSpec, list[dict[str, float]], float]:
    """Train `family` on `device` in this process; returns the trained model (eval mode), its spec, the
    per-epoch history and the seconds from the first step to the last epoch's validation. Pass a `session`
    (its device is used) to read the last checkpoint's whole state afterwards (`session.last_state`:
    precision, cached features)."""
    job = prepare_job(family, cfg.train, dataset_dir, prepared_dir)
    config = WorkerConfig(train=cfg.train, family=family, spec=job.spec, policy=job.policy,
                          data=WorkerData(job.arrays, job.train_rows, job.val_rows), init_state=job.init_state,
                          cpus_per_worker=threads or torch.get_num_threads())
    session = session or LocalSession(device)
    start = time.perf_counter()
    run_worker(config, session)
    if session.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    state = CheckpointState(**session.last_state)
    model = job.spec.build()
    model.load_state_dict(state.model)
    return model.to(session.device).eval(), job.spec, state.history, seconds
