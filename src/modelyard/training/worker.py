"""One training worker: the same code for every model family and modality, in a Ray Train worker or alone.

`engines.run_worker(config, session)` takes a typed `WorkerConfig` (built by the driver) and a *session*: Ray
Train's view of the worker (`modelyard.training.distributed`) or `LocalSession` (one process, no Ray). The
data sit on the worker's device; each worker takes its shard of a permutation shared by all (same seed),
gradients are averaged by DDP (gloo on CPU, NCCL on GPU). Every epoch ends with a checkpoint, so a run that
loses a worker restarts from the last one; every random draw of an epoch is seeded by (seed, epoch, rank),
so a resumed epoch draws what the undisturbed run drew.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from modelyard.artifact import ModelSpec
from modelyard.config import TrainConfig
from modelyard.modalities import Policy
from modelyard.models import FamilyConfig
from modelyard.training import loop, sharding
from modelyard.training.precision import Precision, resolve_precision
from modelyard.training.tracking import MetricsSink, Rank0Tracker

log = logging.getLogger(__name__)

VAL_BATCH = 500


@dataclass(frozen=True)
class WorkerData:
    """The training split as the modality's arrays, and which rows are train and val."""

    arrays: dict[str, np.ndarray]
    train_rows: np.ndarray
    val_rows: np.ndarray


@dataclass(frozen=True)
class WorkerConfig:
    """Everything one worker needs; `data` and `init_state` may be Ray object references."""

    train: TrainConfig
    family: FamilyConfig
    spec: ModelSpec
    policy: Policy
    data: Any = None  # WorkerData, or a reference to it; None when Ray Data streams the rows
    init_state: Any = None  # the initial weights, or a reference to them
    streamed_rows: int | None = None  # training rows Ray Data streams (split equally between workers)
    tensorboard: bool = False  # rank 0 writes TensorBoard events (into `Session.events_dir`)
    sink: MetricsSink | None = None  # where rank 0 logs metrics and tags
    cpus_per_worker: int = 1


class Session(Protocol):
    """A worker's view of the run it is part of."""

    rank: int
    world: int
    device: torch.device

    def get(self, value: Any) -> Any: ...

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def dataset_shard(self, name: str) -> Any: ...

    def get_checkpoint_state(self, device: torch.device) -> dict[str, Any] | None: ...

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        """The epoch's metrics, and rank 0's checkpoint (with the events written so far)."""

    def events_dir(self) -> str:
        """Where this worker writes TensorBoard events: a directory of its own node, restored from the checkpoint
        when the run resumes."""

    def log(self, message: str) -> None:
        """A line for the run's log (progress inside an epoch, the epoch's metrics)."""

    def lightning_setup(self, strategy: str) -> LightningSetup:
        """How the lightning engine's Trainer runs in this session, for `train.strategy`."""


@dataclass(frozen=True)
class LightningSetup:
    """`lightning.Trainer` keyword arguments for a session (strategy, plugins, devices), and what to apply to the
    Trainer once built (Ray's `prepare_trainer`)."""

    kwargs: dict[str, Any]
    prepare: Any = None  # Callable[[Trainer], Trainer] | None

    def apply(self, trainer: Any) -> Any:
        return trainer if self.prepare is None else self.prepare(trainer)


class LocalSession:
    """One process, no Ray: the same worker code for benchmarks, device checks and quick runs. Keeps the last
    checkpoint's state."""

    def __init__(self, device: str | torch.device = "cpu", events_dir: str | None = None) -> None:
        self.rank, self.world = 0, 1
        self.device = torch.device(device)
        self.last_state: dict[str, Any] | None = None
        self._events_dir = events_dir

    def get(self, value: Any) -> Any:
        return value

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def dataset_shard(self, name: str) -> Any:
        raise RuntimeError("a local session has no Ray Data shards; use resident loading")

    def get_checkpoint_state(self, device: torch.device) -> dict[str, Any] | None:
        return None

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        self.last_state = state if state is not None else self.last_state

    def events_dir(self) -> str:
        if self._events_dir is None:
            raise RuntimeError("this local session was given no events_dir for TensorBoard")
        return self._events_dir

    def log(self, message: str) -> None:
        log.info("%s", message)

    def lightning_setup(self, strategy: str) -> LightningSetup:
        if self.device.type == "cuda":
            return LightningSetup({"accelerator": "gpu", "devices": [self.device.index or 0]})
        return LightningSetup({"accelerator": "cpu", "devices": 1})


@dataclass
class StartupMarks:
    """Wall-clock times of a worker's start-up, for Ray Train's fixed cost (`TrainResult.startup_breakdown_s`)."""

    worker_started: float
    data_ready: float | None = None
    model_ready: float | None = None
    tracking_ready: float | None = None
    first_step: float | None = None


@dataclass
class CheckpointState:
    """What each epoch's checkpoint holds (rank 0's), and what the driver reads back at the end."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    epoch: int
    history: list[dict[str, float]]
    spec: dict[str, Any]
    precision: dict[str, str]  # {"mode": none | bf16 | fp16, "reason": ...}
    features_cached: bool
    startup: dict[str, float | None]
    resumed_after_epochs: list[int] = field(default_factory=list)


@dataclass
class EpochTotals:
    """Sums over every worker's shard of one epoch."""

    train_loss: float
    train_correct: float
    train_count: float
    val_loss: float
    val_correct: float
    val_count: float

    @classmethod
    def of(cls, train: dict[str, float], val: dict[str, float]) -> EpochTotals:
        return cls(train["loss_sum"], train["correct"], train["count"], val["loss_sum"], val["correct"], val["count"])

    def all_reduce(self, device: torch.device) -> EpochTotals:
        values = torch.tensor(list(asdict(self).values()), dtype=torch.float64, device=device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(values)
        return EpochTotals(*values.tolist())

    def metrics(self, epoch: int, lr: float, train_s: float, wall_s: float) -> dict[str, float]:
        return {
            "epoch": epoch,
            "train/loss": self.train_loss / max(self.train_count, 1),
            "train/accuracy": self.train_correct / max(self.train_count, 1),
            "val/loss": self.val_loss / max(self.val_count, 1),
            "val/accuracy": self.val_correct / max(self.val_count, 1),
            "train/lr": lr,
            "train/epoch_time_s": train_s,
            "train/samples_per_s": self.train_count / train_s,
            "epoch/wall_time_s": wall_s,  # the epoch as a user waits for it: training, validation, all-reduce
        }


class Progress:
    """Told of each batch; every `every_s` seconds one line: step k/n, samples/s and the time left in the epoch."""

    def __init__(self, session: Session, epoch: int, epochs: int, steps: int, every_s: float) -> None:
        self.session, self.epoch, self.epochs, self.steps, self.every_s = session, epoch, epochs, steps, every_s
        self.start = self.last = time.monotonic()
        self.step = self.rows = 0

    def __call__(self, rows: int) -> None:
        self.step += 1
        self.rows += rows
        now = time.monotonic()
        if now - self.last < self.every_s or self.step >= self.steps:
            return
        self.last = now
        elapsed = now - self.start
        left = elapsed / self.step * (self.steps - self.step)
        self.session.log(f"epoch {self.epoch}/{self.epochs}: step {self.step}/{self.steps}, "
                         f"{self.rows * self.session.world / elapsed:,.0f} samples/s, {_duration(left)} left in "
                         "the epoch")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


class WorkerRun:
    """The state of one worker's run, built up stage by stage."""

    def __init__(self, config: WorkerConfig, session: Session) -> None:
        self.config, self.session, self.tc = config, session, config.train
        self.rank, self.world, self.device = session.rank, session.world, session.device
        self.marks = StartupMarks(worker_started=time.time())
        self.local_batch = max(1, self.tc.batch_size // self.world)
        self.history: list[dict[str, float]] = []
        self.resumed: list[int] = []
        # Under FSDP, the sharded module whose state dicts are gathered (every rank takes part in checkpoints and
        # evaluation), and the prefix its parameter names carry ahead of the family model's own.
        self.shard_root: torch.nn.Module | None = None
        self.shard_prefix = ""
        self.restored: CheckpointState | None = None  # the checkpoint a resumed run started from
        self.val_batch = VAL_BATCH

    def run(self) -> None:
        self._set_up_device()
        self._load_data()
        self.marks.data_ready = time.time()
        self._build_model()
        self.marks.model_ready = time.time()
        start_epoch = self._resume()
        self._start_tracking(resumed=start_epoch > 0 and bool(self.history))
        self.marks.tracking_ready = self.marks.tracking_ready or time.time()
        for epoch in range(start_epoch, self.tc.epochs):
            self._run_epoch(epoch)
        self.tracker.close()

    def _set_up_device(self) -> None:
        if self.device.type == "cpu":
            torch.set_num_threads(self.config.cpus_per_worker)
        torch.manual_seed(self.tc.seed)
        self.mode, self.why = resolve_precision(self.tc.mixed_precision, self.device)
        self.precision = Precision(device=self.device, mode=self.mode, channels_last=self.tc.channels_last)
        if self.rank == 0:
            self.session.log(f"precision: {'fp32' if self.mode == 'none' else self.mode} ({self.why}); "
                             f"{self.world} worker(s), {torch.get_num_threads()} torch thread(s) each")

    def _load_data(self) -> None:
        spec = self.config.spec
        adapter = spec.modality.batch_adapter(spec.preprocessor(), self.config.policy)
        if self.config.streamed_rows is not None:
            if self.tc.strategy == "fsdp" and self.world > 1:
                raise ValueError("train.strategy=fsdp needs the data resident on the workers (every worker must run "
                                 "the same number of validation batches); set data.loading=resident")
            self.batches: Any = loop.StreamingBatches(self.session.dataset_shard("train"),
                                                      self.session.dataset_shard("val"), adapter, self.device,
                                                      seed=self.tc.seed)
            # Ray Train splits a dataset equally between workers: every worker runs the same number of steps.
            self.per_worker = self.config.streamed_rows // self.world
            self.train_rows = torch.arange(self.config.streamed_rows)  # placeholders: the shards decide the rows
            self.val_rows = torch.arange(0)
            return
        data: WorkerData = self.session.get(self.config.data)
        with warnings.catch_warnings():  # arrays from the object store are read-only views; nothing writes to them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            arrays = {k: torch.from_numpy(v).to(self.device) for k, v in data.arrays.items()}
        self.batches = loop.ResidentBatches(arrays, adapter)
        self.train_rows = torch.from_numpy(data.train_rows)
        # Every worker gets an equal share, so all run the same number of steps (DDP needs that).
        self.per_worker = len(self.train_rows) // self.world
        self.val_rows = torch.from_numpy(data.val_rows)[self.rank::self.world].to(self.device)
        if self.tc.strategy == "fsdp" and self.world > 1:
            # A sharded forward pass is a collective: every rank runs the same number of validation batches.
            if len(data.val_rows) < self.world:
                raise ValueError(f"train.strategy=fsdp needs at least one validation row per worker "
                                 f"({len(data.val_rows)} rows, {self.world} workers)")
            most = math.ceil(len(data.val_rows) / self.world)
            self.val_batch = math.ceil(most / math.ceil(most / VAL_BATCH))

    def _build_model(self) -> None:
        model = self.config.spec.build()
        model.load_state_dict(self.session.get(self.config.init_state))
        model = model.to(self.device)
        if self.tc.channels_last and not self._fsdp_shards():  # FSDP2 shards contiguous parameters only
            model = model.to(memory_format=torch.channels_last)
        self.model = self.trained = model  # `trained`: what the optimiser updates
        parts = self.config.family.frozen_parts(model)
        if parts is not None and self.config.policy.is_identity and isinstance(self.batches, loop.ResidentBatches):
            self._cache_features(*parts)
        if self._fsdp_shards():
            self._shard()
        self.steps = loop.steps_per_epoch(self.per_worker, self.local_batch)
        self.optimizer, self.scheduler = self.new_optimizers(model)

    def _fsdp_shards(self) -> bool:
        """This engine shards the model with FSDP2 here (the lightning engine leaves FSDP to its strategy)."""
        return self.tc.strategy == "fsdp" and self.world > 1 and self.tc.engine == "torch"

    def new_optimizers(self, model: torch.nn.Module) -> tuple[torch.optim.Optimizer, Any]:
        """The recipe's optimiser over the family's parameter groups of `model`, and its per-step schedule."""
        optimizer = loop.build_optimizer(self.config.family.param_groups(model), self.tc.learning_rate,
                                         self.tc.momentum, self.tc.weight_decay, self.tc.optimizer)
        updates = max(1, math.ceil(self.steps / self.tc.grad_accum_steps))
        return optimizer, loop.build_scheduler(optimizer, total_steps=updates * self.tc.epochs,
                                               warmup_steps=int(round(updates * self.tc.warmup_epochs)),
                                               schedule=self.tc.schedule)

    def _cache_features(self, backbone: torch.nn.Module, head: torch.nn.Module) -> None:
        """A frozen backbone over unaugmented inputs gives the same features every epoch: compute them once,
        and train only the head on them."""
        t0 = time.perf_counter()
        rows = torch.cat([self.train_rows.to(self.device), self.val_rows]).unique()
        features = loop.compute_features(backbone, self.batches, rows, self.precision)
        self.batches, self.trained = loop.TensorBatches(features, self.batches.labels), head
        if self.rank == 0:
            self.session.log(f"cached {len(rows)} x {features.shape[1]} backbone features in "
                             f"{time.perf_counter() - t0:.1f} s; only the head trains")

    def _shard(self) -> None:
        """FSDP2 over the workers (before the optimiser is built: sharding replaces the parameters)."""
        if self.trained is not self.model:
            if self.rank == 0:
                self.session.log("fsdp: only the head trains on cached features, too small to shard; DDP instead")
            return
        self.shard_root = sharding.shard(self.model)
        if self.rank == 0:
            self.session.log(f"fsdp: parameters, gradients and optimiser state sharded over {self.world} workers")

    def _resume(self) -> int:
        """The epoch to start from: 0, or the one after the last checkpoint when resuming after a failure."""
        state = self.session.get_checkpoint_state(self.device)
        if not state:
            return 0
        checkpoint = self.restored = CheckpointState(**state)
        self._restore(checkpoint)
        self.history = checkpoint.history
        self.marks = StartupMarks(**checkpoint.startup)
        self.resumed = [*checkpoint.resumed_after_epochs, checkpoint.epoch + 1]
        if self.rank == 0:
            self.session.log(f"resumed from the checkpoint of epoch {checkpoint.epoch + 1} after a worker failure")
        return checkpoint.epoch + 1

    def _step_model(self) -> torch.nn.Module:
        """What the training steps call: the sharded model, or the session's (DDP under Ray Train)."""
        return self.trained if self.shard_root is not None else self.session.prepare_model(self.trained)

    def _restore(self, checkpoint: CheckpointState) -> None:
        if self.shard_root is not None:
            sharding.load_full_state(self.shard_root, self.optimizer, checkpoint.model, checkpoint.optimizer)
        else:
            self.model.load_state_dict(checkpoint.model)
            self.optimizer.load_state_dict(checkpoint.optimizer)
        self.scheduler.load_state_dict(checkpoint.scheduler)

    def _start_tracking(self, resumed: bool) -> None:
        self.step_model = self._step_model()
        if self.tc.compile:
            self.step_model = torch.compile(self.step_model)
        events = self.session.events_dir() if self.config.tensorboard and self.rank == 0 else None
        self.tracker = Rank0Tracker(self.rank, events, self.config.sink,
                                    resume_at=len(self.history) + 1 if resumed else None)
        if resumed:
            self.tracker.backfill(self.history)  # an epoch checkpointed just before the failure, not yet logged
            self.tracker.tags({"train.resumed_after_epochs": ",".join(map(str, self.resumed))})
        self.tracker.tags({"train.precision": "fp32" if self.mode == "none" else self.mode,
                           "train.precision_reason": self.why, "train.workers": self.world,
                           "train.threads_per_worker": torch.get_num_threads(), "train.device": self.device.type,
                           "train.engine": self.tc.engine,
                           "train.strategy": self._strategy_used(),
                           "train.features_cached": self.trained is not self.model})

    def _strategy_used(self) -> str:
        return "fsdp" if self.shard_root is not None else "ddp"

    def _epoch_batches(self, epoch: int) -> Any:
        """Seed the epoch's draws and return this worker's training batches for it."""
        torch.manual_seed(self.tc.seed * 100_003 + epoch * 1009 + self.rank)  # dropout and other draws
        gen = torch.Generator(device=self.device).manual_seed(self.tc.seed * 1000 + epoch)
        perm = torch.randperm(len(self.train_rows), generator=torch.Generator().manual_seed(self.tc.seed + epoch))
        shard = self.train_rows[perm][self.rank * self.per_worker:(self.rank + 1) * self.per_worker].to(self.device)
        return self.batches.train(shard, self.local_batch, gen)

    def _progress(self, epoch: int) -> Progress | None:
        return Progress(self.session, epoch + 1, self.tc.epochs, self.steps, self.tc.progress_every_s) \
            if self.rank == 0 else None

    def _run_epoch(self, epoch: int) -> None:
        t0 = time.perf_counter()
        batches = self._epoch_batches(epoch)
        clock = _FirstStepClock(batches) if self.marks.first_step is None else None
        trained = loop.train_epoch(self.step_model, clock or batches, optimizer=self.optimizer,
                                   scheduler=self.scheduler, precision=self.precision,
                                   label_smoothing=self.tc.label_smoothing, accum_steps=self.tc.grad_accum_steps,
                                   clip_norm=self.tc.grad_clip_norm, on_batch=self._progress(epoch))
        if clock is not None:
            self.marks.first_step = clock.first_step_at
        self._end_epoch(epoch, trained, t0, time.perf_counter() - t0)

    def _end_epoch(self, epoch: int, trained: dict[str, float], t0: float, train_s: float) -> None:
        """Validate, all-reduce the epoch's sums, write events, checkpoint and log: the same for both engines."""
        validated = loop.evaluate_batches(self.shard_root or self.trained,
                                          self.batches.eval(self.val_rows, self.val_batch), self.precision)
        totals = EpochTotals.of(trained, validated).all_reduce(self.device)
        metrics = totals.metrics(epoch + 1, self.optimizer.param_groups[0]["lr"], train_s, time.perf_counter() - t0)
        self.history.append(metrics)
        self.tracker.events(metrics, step=epoch + 1)  # before the checkpoint, which carries the events
        sharded = self.shard_root is not None
        state = self._checkpoint(epoch) if self.rank == 0 or sharded else None  # sharded: a collective
        self.session.report(metrics, asdict(state) if state is not None and self.rank == 0 else None)
        # Logged once checkpointed: an epoch lost to a failure is re-run, and logged, once.
        self.tracker.log(metrics, step=epoch + 1)
        if self.rank == 0:
            self.session.log(f"epoch {epoch + 1}/{self.tc.epochs}: " + ", ".join(
                f"{k}={v:.4f}" for k, v in metrics.items() if k != "epoch"))

    def _checkpoint(self, epoch: int) -> CheckpointState:
        if self.shard_root is not None:
            full = sharding.full_model_state(self.shard_root)
            model = {k.removeprefix(self.shard_prefix): v for k, v in full.items()}
            optimizer = sharding.full_optimizer_state(self.shard_root, self.optimizer)
        else:
            model = {k: v.cpu() for k, v in self.model.state_dict().items()}
            optimizer = self.optimizer.state_dict()
        return CheckpointState(
            model=model, optimizer=optimizer,
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else {}, epoch=epoch,
            history=self.history, spec=asdict(self.config.spec),
            precision={"mode": self.mode, "reason": self.why}, features_cached=self.trained is not self.model,
            startup=asdict(self.marks), resumed_after_epochs=self.resumed)


class _FirstStepClock:
    """Passes `batches` through and notes the wall-clock time the first step ended (when the second batch is
    asked for, or the epoch ends)."""

    def __init__(self, batches: Any) -> None:
        self.batches, self.first_step_at = batches, None

    def __iter__(self) -> Any:
        for i, item in enumerate(self.batches):
            if i == 1:
                self.first_step_at = time.time()
            yield item
        if self.first_step_at is None:
            self.first_step_at = time.time()
