"""Distributed training with Ray Train: the only module that imports `ray.train`.

`train(...)` is the one function that builds ScalingConfig/RunConfig. It plans the workers from the
cluster's nodes, prepares the job once (spec, fitted preprocessor, data, initial weights) and puts it in
Ray's object store, so workers on other nodes need no path; each worker then runs `engines.run_worker`
through `RaySession`. Rank 0's log lines (progress inside an epoch, each epoch's metrics) come back to this
process through a queue and are logged here, where the caller's log (a Prefect flow run's) records them.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from modelyard.artifact import ModelSpec, save_model_dir
from modelyard.config import PipelineConfig
from modelyard.data.dataset import replace_dir
from modelyard.models import FamilyConfig
from modelyard.runtime import connect_ray
from modelyard.training.engines import run_worker
from modelyard.training.job import TrainingJob, choose_loading, describe, prepare_job, rows_of
from modelyard.training.plan import WorkerPlan, plan_workers
from modelyard.training.precision import resolve_precision
from modelyard.training.tracking import MetricsSink
from modelyard.training.worker import CheckpointState, LightningSetup, WorkerConfig, WorkerData

log = logging.getLogger(__name__)
worker_log = logging.getLogger("modelyard.training.worker")
EVENTS = "tensorboard"  # rank 0's TensorBoard events inside each checkpoint


@dataclass
class TrainResult:
    model_dir: str
    run_id: str | None
    epochs: int
    history: list[dict[str, float]]
    wall_time_s: float
    num_workers: int
    device: str
    checkpoint_path: str
    cpus_per_worker: int = 1
    precision: str = "none"  # what the steps ran in: none (fp32) | bf16 | fp16
    precision_reason: str = ""
    features_cached: bool = False  # a frozen backbone's features were computed once and only the head trained
    # Ray Train's fixed cost: from `trainer.fit()` to the end of the first optimiser step (worker start, process
    # group, data and weights from the object store, model build), in seconds
    startup_s: float | None = None
    startup_breakdown_s: dict[str, float] = field(default_factory=dict)  # the same, stage by stage (rank 0)
    resumed_after_epochs: list[int] = field(default_factory=list)  # one entry per restart from a checkpoint

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def check_devices(cfg: PipelineConfig) -> None:
    """On a local Ray (this machine's own devices), GPUs or fp16 asked for without a CUDA device fail here,
    before anything is started."""
    has_cuda = torch.cuda.is_available()
    if cfg.train.use_gpu == "true" and not has_cuda:
        raise ValueError("train.use_gpu=true but this machine has no CUDA device; use auto or false")
    if (cfg.train.engine, cfg.train.strategy) == ("lightning", "fsdp") and cfg.train.num_workers != 1 and (
            not has_cuda or cfg.train.use_gpu == "false"):
        from modelyard.training.lightning import LIGHTNING_FSDP_NEEDS_GPUS

        raise ValueError(LIGHTNING_FSDP_NEEDS_GPUS)
    if cfg.train.mixed_precision == "fp16" and not has_cuda:
        raise ValueError("train.mixed_precision=fp16 needs a CUDA device; use auto, bf16 or none on CPU")
    if not has_cuda or cfg.train.use_gpu == "false":
        resolve_precision(cfg.train.mixed_precision, torch.device("cpu"))  # warns early about emulated bf16


def train(cfg: PipelineConfig, family: FamilyConfig, dataset_dir: Path, prepared_dir: Path, output_dir: Path, *,
          run_id: str | None = None, sink: MetricsSink | None = None, ray_address: str | None = None,
          callbacks: list[Any] | None = None, augment: dict[str, Any] | None = None) -> TrainResult:
    """Train `family` on the prepared split with Ray Train (workers planned by `plan_workers`).

    Writes `<output_dir>/model/` (weights + spec), `history.json`, `train.json` and TensorBoard events under
    `<output_dir>/tensorboard/`; per-epoch metrics also go to `sink` from rank 0. The output replaces the
    previous one only when training succeeded. `callbacks` go to Ray Train's RunConfig (a search trial's
    TuneReportCallback); `augment` replaces the prepared augmentation policy (a search trial's).
    """
    import ray

    address = ray_address or os.environ.get("RAY_ADDRESS")
    if not address and not ray.is_initialized():
        check_devices(cfg)
    output_dir = Path(output_dir).resolve()
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    started_ray = not ray.is_initialized()
    connect_ray(ray_address)
    _remove_dead_partials(output_dir)
    # This run's own: a second training into the same place neither reads nor deletes it, and the last one to
    # finish is what stays.
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-{os.getpid()}-", dir=output_dir.parent))
    try:
        plan = plan_workers(cfg.train, [n["Resources"] for n in ray.nodes() if n.get("Alive")])
        log.info("training plan: %s", plan.reason)
        job = prepare_job(family, cfg.train, dataset_dir, prepared_dir, augment=augment)
        loading = choose_loading(cfg.data, job)
        log.info("data: %s", describe(job, loading))
        result = _fit(cfg, job, plan, loading, staging, output_dir, run_id, sink, callbacks)
        replace_dir(staging, output_dir)  # only now: a failed run leaves the previous output intact
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if started_ray:
            ray.shutdown()


def _fit(cfg: PipelineConfig, job: TrainingJob, plan: WorkerPlan, loading: str, staging: Path, output_dir: Path,
         run_id: str | None, sink: MetricsSink | None, callbacks: list[Any] | None = None) -> TrainResult:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    streaming = loading == "streaming"
    worker = WorkerConfig(
        train=cfg.train, family=job.family, spec=job.spec, policy=job.policy,
        data=None if streaming else ray.put(WorkerData(job.arrays, job.train_rows, job.val_rows)),
        init_state=ray.put(job.init_state), streamed_rows=len(job.train_rows) if streaming else None,
        tensorboard=True, sink=sink, cpus_per_worker=plan.cpus_per_worker)
    with _LogRelay() as relay:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"worker": worker, "log_queue": relay.queue},
            datasets=ray_datasets(job) if streaming else None,
            scaling_config=ScalingConfig(num_workers=plan.num_workers, use_gpu=plan.use_gpu,
                                         resources_per_worker={"CPU": plan.cpus_per_worker}),
            run_config=RunConfig(name=f"train-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
                                 storage_path=cfg.train.storage or str(output_dir.parent / "ray"),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2),
                                 failure_config=FailureConfig(max_failures=cfg.train.max_failures),
                                 callbacks=callbacks))
        start, fit_called_at = time.perf_counter(), time.time()
        result = trainer.fit()
        wall = time.perf_counter() - start
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}") from result.error
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as ckpt_dir:
        state = CheckpointState(**torch.load(Path(ckpt_dir) / "state.pt", map_location="cpu", weights_only=False))
        # Rank 0's events came through the run's storage in the checkpoint, wherever rank 0 ran.
        if (Path(ckpt_dir) / EVENTS).is_dir():
            shutil.copytree(Path(ckpt_dir) / EVENTS, staging / "tensorboard")
    return _finish(state, plan, staging, output_dir, run_id, wall, fit_called_at, result.checkpoint.path)


def _finish(state: CheckpointState, plan: WorkerPlan, staging: Path, output_dir: Path, run_id: str | None,
            wall: float, fit_called_at: float, checkpoint_path: str) -> TrainResult:
    """Save the last checkpoint's model with its spec, and the run's history and record, into `staging`."""
    spec = ModelSpec(**state.spec)
    model = spec.build()
    model.load_state_dict(state.model)
    save_model_dir(model, spec, staging / "model")
    first_step = state.startup.get("first_step")
    result = TrainResult(
        model_dir=str(output_dir / "model"), run_id=run_id, epochs=len(state.history), history=state.history,
        wall_time_s=round(wall, 2), num_workers=plan.num_workers, device="cuda" if plan.use_gpu else "cpu",
        checkpoint_path=checkpoint_path, cpus_per_worker=plan.cpus_per_worker, precision=state.precision["mode"],
        precision_reason=state.precision["reason"], features_cached=state.features_cached,
        startup_s=round(first_step - fit_called_at, 2) if first_step else None,
        startup_breakdown_s=_breakdown(state.startup, fit_called_at), resumed_after_epochs=state.resumed_after_epochs)
    (staging / "history.json").write_text(json.dumps(state.history, indent=2) + "\n")
    (staging / "train.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    log.info("trained %d epochs in %.1f s (%s, precision %s); val accuracy %.4f; %.1f s from fit() to the first "
             "step (%s)", result.epochs, wall, plan.reason, result.precision,
             result.final.get("val/accuracy", float("nan")), result.startup_s or float("nan"),
             ", ".join(f"{k} {v:.1f}" for k, v in result.startup_breakdown_s.items()))
    return result


def _breakdown(marks: dict[str, float | None], fit_called_at: float) -> dict[str, float]:
    """Seconds of each startup stage: workers up, data and weights in, model built, tracking ready, first step."""
    names = {"worker_started": "workers_started", "data_ready": "data", "model_ready": "model",
             "tracking_ready": "tracking", "first_step": "first_step"}
    out, before = {}, fit_called_at
    for key, name in names.items():
        if marks.get(key):
            out[name] = round(marks[key] - before, 2)
            before = marks[key]
    return out


def _remove_dead_partials(output_dir: Path) -> None:
    """Delete the half-written outputs of trainings into `output_dir` whose process is gone (killed before its
    own cleanup ran); a live one's is left alone."""
    import psutil

    for partial in output_dir.parent.glob(f".{output_dir.name}.partial-*"):
        pid = partial.name.removeprefix(f".{output_dir.name}.partial-").partition("-")[0]
        if not pid.isdigit() or not psutil.pid_exists(int(pid)):
            log.info("removing %s, left by a training that died", partial)
            shutil.rmtree(partial, ignore_errors=True)


def ray_datasets(job: TrainingJob) -> dict[str, Any]:
    """The train and val rows as Ray Datasets (one column per array, tensor columns for rows of arrays)."""
    import pyarrow as pa
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    def table(part: str) -> Any:
        columns = rows_of(job, part)
        return pa.table({k: ArrowTensorArray.from_numpy(v) if v.ndim > 1 else v for k, v in columns.items()})

    return {part: ray.data.from_arrow(table(part)) for part in ("train", "val")}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    session = RaySession(config.get("log_queue"))
    try:
        run_worker(config["worker"], session)
    finally:
        session.close()


class RaySession:
    """Ray Train's view of a worker: rank, device, checkpoints, reports; log lines go to the driver."""

    def __init__(self, log_queue: Any = None) -> None:
        import ray.train
        import ray.train.torch

        self._train, self._queue = ray.train, log_queue
        self._events: str | None = None
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        import ray.util

        self.log(f"worker {self.rank + 1} of {self.world} on node {ray.util.get_node_ip_address()} ({self.device})")

    def get(self, ref: Any) -> Any:
        import ray

        return ray.get(ref)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def dataset_shard(self, name: str) -> Any:
        return self._train.get_dataset_shard(name)

    def get_checkpoint_state(self, device: torch.device) -> dict[str, Any] | None:
        checkpoint = self._train.get_checkpoint()
        if not checkpoint:
            return None
        with checkpoint.as_directory() as ckpt_dir:
            if (Path(ckpt_dir) / EVENTS).is_dir():  # the events up to that checkpoint, to go on from
                shutil.copytree(Path(ckpt_dir) / EVENTS, self.events_dir(), dirs_exist_ok=True)
            return torch.load(Path(ckpt_dir) / "state.pt", map_location=device, weights_only=False)

    def events_dir(self) -> str:
        if self._events is None:
            self._events = tempfile.mkdtemp(prefix="modelyard-events-")  # on this worker's node
        return self._events

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if state is not None:
                torch.save(state, Path(tmp) / "state.pt")
                if self._events is not None:
                    shutil.copytree(self._events, Path(tmp) / EVENTS)
                checkpoint = self._train.Checkpoint.from_directory(tmp)
            self._train.report(dict(metrics), checkpoint=checkpoint)

    def lightning_setup(self, strategy: str) -> LightningSetup:
        from ray.train.lightning import (
            RayDDPStrategy,
            RayFSDPStrategy,
            RayLightningEnvironment,
            prepare_trainer,
        )

        chosen = RayFSDPStrategy() if strategy == "fsdp" and self.world > 1 else RayDDPStrategy()
        return LightningSetup({"accelerator": "auto", "devices": "auto", "strategy": chosen,
                               "plugins": [RayLightningEnvironment()]}, prepare=prepare_trainer)

    def close(self) -> None:
        if self._events is not None:
            shutil.rmtree(self._events, ignore_errors=True)

    def log(self, message: str) -> None:
        if self._queue is None:
            worker_log.info("%s", message)
            return
        try:
            self._queue.put_nowait(message)
        except Exception:  # a full or gone queue must never stop training; the line still reaches Ray's log
            worker_log.info("%s", message)


class _LogRelay:
    """A queue the workers put log lines in, and a thread here that logs them as they come."""

    def __enter__(self) -> _LogRelay:
        from ray.util.queue import Queue

        self.queue = Queue(maxsize=10_000, actor_options={"num_cpus": 0})
        self._stop = threading.Event()
        # The caller's context goes with the thread: a Prefect task run's, so the lines land in its log.
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._drain_until_stopped,), name="worker-log-relay",
                                        daemon=True)
        self._thread.start()
        return self

    def _drain(self) -> None:
        for message in self.queue.get_nowait_batch(self.queue.qsize()):
            worker_log.info("%s", message)

    def _drain_until_stopped(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self._drain()
            except Exception as exc:  # the relay is a convenience; training goes on without it
                log.debug("worker log relay: %s", exc)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self._drain()
            self.queue.shutdown()
        except Exception as exc:
            log.debug("worker log relay: %s", exc)
