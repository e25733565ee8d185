"""The Ray Train worker's code in one process, without Ray: for benchmarks, device checks and quick looks.

    model, spec, history, seconds = train_local(cfg, dataset_dir, prepared_dir, device="cuda")

Exactly `distributed.run_worker` (same task preparation, batch adapters, loop, checkpoints in memory), so a
figure measured here is the pipeline's training minus Ray's fixed start-up cost.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Any

import torch

from modelyard.config import PipelineConfig
from modelyard.models.artifact import ModelSpec
from modelyard.training.distributed import LocalSession, prepare_task, run_worker


def train_local(cfg: PipelineConfig, dataset_dir: str | os.PathLike[str], prepared_dir: str | os.PathLike[str],
                device: str | torch.device = "cpu", threads: int | None = None, session: LocalSession | None = None,
                ) -> tuple[torch.nn.Module, ModelSpec, list[dict[str, float]], float]:
    """Train `cfg` on `device` in this process; returns the trained model (eval mode), its spec, the
    per-epoch history and the seconds from the first step to the last epoch's validation. Pass a `session`
    (its device is used) to read the last checkpoint's whole state afterwards (`session.last_state`:
    precision, cached features)."""
    task = prepare_task(cfg, dataset_dir, prepared_dir)
    config: dict[str, Any] = {
        "cfg": cfg.model_dump(mode="json", by_alias=True),
        "task": {"spec": asdict(task.spec), "policy": asdict(task.policy)},
        "data_ref": task.data, "init_ref": task.init_state, "streaming": None,
        "output_dir": None, "run_id": None, "tracking_uri": None,
        "cpus_per_worker": threads or torch.get_num_threads(),
    }
    session = session or LocalSession(device)
    start = time.perf_counter()
    run_worker(config, session)
    if session.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    state = session.last_state
    model = task.spec.build()
    model.load_state_dict(state["model"])
    return model.to(session.device).eval(), task.spec, state["history"], seconds
