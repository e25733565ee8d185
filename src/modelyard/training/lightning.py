"""The lightning engine (`train.engine: lightning`): the family's model stepped by `lightning.Trainer`.

Only the optimisation loop changes hands. The worker's data (the same batch sources, augmenting on the
device), optimiser and schedule (`loop.build_optimizer` / `build_scheduler`, stepped per optimiser step),
loss, gradient accumulation and clipping, and precision (resolved from the hardware, then handed to
Lightning as its precision plugin) are the torch engine's. So are the epoch's end: validation on each
worker's share, the all-reduced sums, TensorBoard, MLflow, and the same `CheckpointState` reported to Ray
Train. A Lightning checkpoint would be a second format to resume, register and serve from; this one is
the format the driver, the registry and the serving apps already read, and resuming after a worker failure
restores the weights before `fit` and the optimiser and schedule in `on_train_start`.

Under Ray Train the Trainer runs with `RayDDPStrategy` and `RayLightningEnvironment` and goes through
`prepare_trainer`; alone (`LocalSession`) it runs on the one device. Lightning is imported as
`lightning.pytorch` only (Ray's `ray.train.lightning` prefers it too): mixing it with `pytorch_lightning`
makes Lightning reject the strategy.

Your own module: `train.lightning_module: "package.module:Class"`, a subclass of `FamilyModule`. It is
built with the same arguments, must keep the family's model in `self.model` (what is checkpointed,
registered and served), and its `step(batch)` must return the loss and logits of shape (batch, classes).
Override `step` for another loss, `configure_optimizers` for another optimiser.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from modelyard.config import TrainConfig
from modelyard.training import loop, sharding
from modelyard.training.worker import Progress, WorkerRun

LIGHTNING_FSDP_NEEDS_GPUS = (
    "train.strategy=fsdp with train.engine=lightning needs GPU workers: Lightning's FSDPStrategy (Ray's "
    "RayFSDPStrategy) is FSDP1, which torch 2.14 refuses on CPUs (\"FSDP needs a non-CPU accelerator device\"); on "
    "CPUs use train.engine=torch (FSDP2's fully_shard shards over gloo) or train.strategy=ddp")
PRECISION_PLUGINS = {"none": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}
OptimizerFactory = Callable[[nn.Module], tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]]


class FamilyModule(pl.LightningModule):
    """A model family's `nn.Module` as a LightningModule: cross-entropy with the recipe's label smoothing, the
    recipe's optimiser and per-step schedule. Keeps the epoch's loss and accuracy sums for the worker."""

    def __init__(self, model: nn.Module, settings: TrainConfig, *, num_classes: int,
                 optimizers: OptimizerFactory, format_inputs: Callable[[Any], Any] | None = None) -> None:
        super().__init__()
        self.model = model
        self.settings, self.num_classes = settings, num_classes
        self._optimizers, self._format = optimizers, format_inputs or (lambda x: x)
        self._sums: torch.Tensor | None = None

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.model(*args, **kwargs)
        return getattr(out, "logits", out)

    def step(self, batch: tuple[Any, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of one batch of the family's inputs and labels."""
        x, y = batch
        logits = loop.logits_of(self, self._format(x))
        return F.cross_entropy(logits, y, label_smoothing=self.settings.label_smoothing), logits

    def training_step(self, batch: tuple[Any, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, logits = self.step(batch)
        y = batch[1]
        if logits.shape != (len(y), self.num_classes):
            raise ValueError(f"{type(self).__name__}.step returned logits of shape {tuple(logits.shape)}; the family "
                             f"contract is (batch, classes) = ({len(y)}, {self.num_classes})")
        sums = torch.stack([loss.detach().float() * len(y), (logits.argmax(1) == y).sum().float(),
                            torch.tensor(float(len(y)), device=y.device)])
        self._sums = sums if self._sums is None else self._sums + sums
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer, scheduler = self._optimizers(self.model)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def take_sums(self) -> dict[str, float]:
        """The epoch's training sums so far (as `loop.train_epoch` returns them), and start again."""
        loss, correct, count = self._sums.tolist() if self._sums is not None else (0.0, 0.0, 0.0)
        self._sums = None
        return {"loss_sum": loss, "correct": correct, "count": count}


def load_module_class(path: str | None) -> type[FamilyModule]:
    """`FamilyModule`, or the user's subclass named by "package.module:Class" (or "package.module.Class")."""
    if path is None:
        return FamilyModule
    module_name, _, name = path.replace(":", ".").rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"train.lightning_module {path!r} cannot be imported: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, FamilyModule)):
        raise ValueError(f"train.lightning_module {path!r} is not a subclass of "
                         "modelyard.training.lightning.FamilyModule")
    return cls


class _EpochBatches:
    """This worker's batches of the Trainer's current epoch (the torch engine's draws for that epoch)."""

    def __init__(self, run: LightningWorkerRun) -> None:
        self.run = run

    def __len__(self) -> int:
        return self.run.steps

    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor]]:
        return iter(self.run._epoch_batches(self.run.epoch))


class _EpochEnds(pl.Callback):
    """Hands each epoch's end to the worker: validation, all-reduce, events, checkpoint, metrics."""

    def __init__(self, run: LightningWorkerRun) -> None:
        self.run = run
        self.progress: Progress | None = None
        self.t0 = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = self.run
        optimizer = trainer.optimizers[0]
        configs = trainer.lr_scheduler_configs  # a module's own optimiser may come without a schedule
        scheduler = configs[0].scheduler if configs else None
        if run.sharded_by_lightning:
            run.shard_root, run.shard_prefix = trainer.strategy.model, "model."
        if run.restored is not None and optimizer is not run.optimizer:
            # Resuming an optimiser built by the module (FamilyModule's own is the worker's, restored already).
            if run.shard_root is not None:
                sharding.load_full_state(run.shard_root, optimizer, None, run.restored.optimizer)
            else:
                optimizer.load_state_dict(run.restored.optimizer)
            if scheduler is not None and run.restored.scheduler:
                scheduler.load_state_dict(run.restored.scheduler)
        run.optimizer, run.scheduler = optimizer, scheduler

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.t0 = time.perf_counter()
        pl_module.train()  # the last epoch's validation (ours, not Lightning's loop) left it in eval mode
        self.progress = self.run._progress(self.run.epoch)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.run.marks.first_step is None:
            self.run.marks.first_step = time.time()
        if self.progress is not None:
            self.progress(len(batch[1]))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert isinstance(pl_module, FamilyModule)
        train_s = time.perf_counter() - self.t0
        self.run._end_epoch(self.run.epoch, pl_module.take_sums(), self.t0, train_s)
        self.run.epoch += 1


class LightningWorkerRun(WorkerRun):
    """`WorkerRun` with the epochs stepped by `lightning.Trainer` (see the module doc)."""

    @property
    def sharded_by_lightning(self) -> bool:
        """Lightning's FSDP shards the model (the whole model trains: cached features leave only a head, which
        DDP trains, as the torch engine does)."""
        return self.tc.strategy == "fsdp" and self.world > 1 and getattr(self, "trained", None) is getattr(
            self, "model", None)

    def run(self) -> None:
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # "GPU available: False", summaries
        if self.tc.strategy == "fsdp" and self.world > 1 and self.device.type == "cpu":
            raise ValueError(LIGHTNING_FSDP_NEEDS_GPUS)
        self._set_up_device()
        self._load_data()
        self.marks.data_ready = time.time()
        self._build_model()
        self.marks.model_ready = time.time()
        self.epoch = self._resume()
        self.step_model = self.trained
        self._start_tracking(resumed=self.epoch > 0 and bool(self.history))
        self.marks.tracking_ready = self.marks.tracking_ready or time.time()
        if self.epoch < self.tc.epochs:
            module = self._module()
            trainer = self._trainer(self.tc.epochs - self.epoch)
            trainer.fit(module, train_dataloaders=_EpochBatches(self))
        self.tracker.close()

    def _restore(self, checkpoint: Any) -> None:
        """The weights before `fit`; under FSDP the optimiser is the module's, restored in `on_train_start`."""
        if not self.sharded_by_lightning:
            super()._restore(checkpoint)
            return
        self.model.load_state_dict(checkpoint.model)

    def _strategy_used(self) -> str:
        return "fsdp" if self.sharded_by_lightning else "ddp"

    def _step_model(self) -> torch.nn.Module:
        return self.trained  # Lightning's strategy wraps it, not `session.prepare_model`

    def _module(self) -> FamilyModule:
        cls = load_module_class(self.tc.lightning_module)
        # Lightning's FSDP wraps the module before asking it for optimisers: build them then, over its parameters.
        optimizers = self.new_optimizers if self.sharded_by_lightning else lambda model: (self.optimizer,
                                                                                           self.scheduler)
        module = cls(self.trained, self.tc, num_classes=len(self.config.spec.labels), optimizers=optimizers,
                     format_inputs=self.precision.format)
        if getattr(module, "model", None) is not self.trained:
            raise ValueError(f"{cls.__name__} must keep the family's model in self.model (what is checkpointed, "
                             "registered and served)")
        if self.tc.compile:
            module.model = torch.compile(self.trained)
        return module

    def _trainer(self, epochs: int) -> pl.Trainer:
        setup = self.session.lightning_setup("fsdp" if self.sharded_by_lightning else "ddp")
        trainer = pl.Trainer(
            max_epochs=epochs, precision=PRECISION_PLUGINS[self.mode],
            accumulate_grad_batches=self.tc.grad_accum_steps, gradient_clip_val=self.tc.grad_clip_norm,
            callbacks=[_EpochEnds(self)], logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False,
            **setup.kwargs)
        return setup.apply(trainer)
