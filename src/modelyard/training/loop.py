"""Plain PyTorch training and evaluation: the same code runs in one process or in N Ray workers.

One loop for every model family and modality. Batches come from a *batch source* whose `train(indices,
batch_size, gen)` and `eval(indices, batch_size)` yield `(inputs, labels)` on the training device:
`ResidentBatches` gathers rows of arrays held on the device and hands them to the modality's batch adapter
(which augments and preprocesses there: far faster than a per-sample DataLoader for datasets this size),
`StreamingBatches` does the same for rows streamed by Ray Data, and `TensorBatches` serves precomputed
inputs (a frozen backbone's cached features). Inputs may be a tensor or a mapping of tensors (token ids and
attention mask); a model may return an object with `.logits` (Hugging Face).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelyard.modalities import BatchAdapter
from modelyard.training.precision import Precision

ParamGroups = list[tuple[str, list[nn.Parameter], float]]  # (name, parameters, learning-rate factor)


def build_optimizer(
    model_or_groups: nn.Module | ParamGroups,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    kind: str = "sgd",
) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW over parameter groups, each at `lr` x its factor; no weight decay on
    biases and normalisation weights (parameters with one dimension)."""
    groups = model_or_groups
    if isinstance(groups, nn.Module):
        groups = [("all", [p for p in groups.parameters() if p.requires_grad], 1.0)]
    param_groups = []
    for name, params, factor in groups:
        for suffix, picked, decay in (("", [p for p in params if p.ndim > 1], weight_decay),
                                      ("/no_decay", [p for p in params if p.ndim <= 1], 0.0)):
            if picked:
                param_groups.append({"params": picked, "lr": lr * factor, "weight_decay": decay,
                                     "name": name + suffix})
    if not param_groups:
        raise ValueError("the model has no trainable parameters")
    if kind == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if kind == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr)
    raise ValueError(f"unknown optimizer {kind!r}; use sgd or adamw")


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, schedule: str = "cosine"
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine or linear decay to zero (or constant), stepped once per optimiser step."""
    if schedule not in ("cosine", "linear", "constant"):
        raise ValueError(f"unknown schedule {schedule!r}; use cosine, linear or constant")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress if schedule == "linear" else 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def batch_indices(indices: torch.Tensor, batch_size: int, gen: torch.Generator | None) -> Iterator[torch.Tensor]:
    """Shuffled (when `gen` is given) batches of `indices`; the last partial batch is dropped when shuffling."""
    if gen is not None:
        indices = indices[torch.randperm(len(indices), generator=gen, device=gen.device).to(indices.device)]
        stop = len(indices) - len(indices) % batch_size
    else:
        stop = len(indices)
    for start in range(0, stop, batch_size):
        yield indices[start : start + batch_size]


def steps_per_epoch(rows: int, batch_size: int) -> int:
    return rows // batch_size


def logits_of(model: nn.Module, x: Any) -> torch.Tensor:
    """Call the model on a tensor or a mapping of tensors; accept a bare tensor or an output with `.logits`."""
    out = model(**x) if isinstance(x, Mapping) else model(x)
    return getattr(out, "logits", out)


@torch.no_grad()
def eval_step(model: nn.Module, x: Any, y: torch.Tensor, precision: Precision) -> tuple[torch.Tensor, torch.Tensor]:
    with precision.autocast():
        logits = logits_of(model, precision.format(x))
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
    return loss, (logits.argmax(1) == y).sum()


def _optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, precision: Precision,
                    clip_norm: float | None) -> None:
    if precision.scaler is not None:
        if clip_norm is not None:
            precision.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        precision.scaler.step(optimizer)
        precision.scaler.update()
    else:
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[Any, torch.Tensor]],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    precision: Precision,
    label_smoothing: float = 0.0,
    accum_steps: int = 1,
    clip_norm: float | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """One pass over `batches` (this worker's shard); an optimiser step every `accum_steps` micro-batches
    (DDP's gradient all-reduce only on those), with optional gradient clipping. `on_batch(rows)` is told of
    each micro-batch done (progress reports). Returns loss/accuracy sums."""
    model.train()
    loss_sum = correct = None
    seen = pending = 0
    optimizer.zero_grad(set_to_none=True)
    for x, y in batches:
        pending += 1
        sync = pending == accum_steps
        no_sync = model.no_sync() if not sync and hasattr(model, "no_sync") else contextlib.nullcontext()
        with no_sync:
            with precision.autocast():
                logits = logits_of(model, precision.format(x))
                loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            scaled = loss / accum_steps if accum_steps > 1 else loss
            (precision.scaler.scale(scaled) if precision.scaler is not None else scaled).backward()
        if sync:
            _optimizer_step(model, optimizer, precision, clip_norm)
            if scheduler is not None:
                scheduler.step()
            pending = 0
        batch_loss, hits = loss.detach() * len(y), (logits.argmax(1) == y).sum()
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        correct = hits if correct is None else correct + hits
        seen += len(y)
        if on_batch is not None:
            on_batch(len(y))
    if pending:  # a last, shorter accumulation
        _optimizer_step(model, optimizer, precision, clip_norm)
        if scheduler is not None:
            scheduler.step()
    return {"loss_sum": float(loss_sum or 0.0), "correct": float(correct or 0), "count": float(seen)}


def evaluate_batches(model: nn.Module, batches: Iterable[tuple[Any, torch.Tensor]], precision: Precision) -> dict[str, float]:
    """Loss/accuracy sums over `batches`, no augmentation."""
    model.eval()
    loss_sum, correct, count = 0.0, 0.0, 0
    for x, y in batches:
        loss, hits = eval_step(model, x, y, precision)
        loss_sum += float(loss)
        correct += float(hits)
        count += len(y)
    return {"loss_sum": loss_sum, "correct": correct, "count": float(count)}


# ---- batch sources ----------------------------------------------------------------------------------

class ResidentBatches:
    """Arrays held on the training device (one row per input); a batch's rows are gathered by index and
    handed to the modality's adapter, which augments (train) and preprocesses them there."""

    def __init__(self, arrays: Mapping[str, torch.Tensor], adapter: BatchAdapter) -> None:
        self.arrays, self.adapter = dict(arrays), adapter
        self.labels = self.arrays["labels"]

    def rows(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v[idx] for k, v in self.arrays.items()}

    def train(self, indices: torch.Tensor, batch_size: int, gen: torch.Generator) -> Iterator[tuple[Any, torch.Tensor]]:
        for idx in batch_indices(indices, batch_size, gen):
            yield self.adapter.train_batch(self.rows(idx), gen)

    def eval(self, indices: torch.Tensor, batch_size: int) -> Iterator[tuple[Any, torch.Tensor]]:
        for idx in batch_indices(indices, batch_size, None):
            yield self.adapter.eval_batch(self.rows(idx))


class StreamingBatches:
    """Batches streamed from this worker's Ray Data shards (the same columns as resident arrays), handed to
    the modality's adapter on the device like resident ones. The shard decides the rows: `indices` are
    ignored."""

    def __init__(self, train_shard: Any, val_shard: Any, adapter: BatchAdapter, device: torch.device,
                 seed: int = 0) -> None:
        self.train_shard, self.val_shard = train_shard, val_shard
        self.adapter, self.device, self.seed = adapter, device, seed
        self.epoch = 0

    def train(self, indices: torch.Tensor, batch_size: int, gen: torch.Generator) -> Iterator[tuple[Any, torch.Tensor]]:
        self.epoch += 1
        for batch in self.train_shard.iter_torch_batches(
            batch_size=batch_size, drop_last=True, device=self.device,
            local_shuffle_buffer_size=max(4 * batch_size, 1000), local_shuffle_seed=self.seed * 1000 + self.epoch,
        ):
            yield self.adapter.train_batch(batch, gen)

    def eval(self, indices: torch.Tensor, batch_size: int) -> Iterator[tuple[Any, torch.Tensor]]:
        for batch in self.val_shard.iter_torch_batches(batch_size=batch_size, device=self.device):
            yield self.adapter.eval_batch(batch)


class TensorBatches:
    """Precomputed inputs (e.g. a frozen backbone's features), indexed by the same row numbers as the data."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        self.inputs, self.labels = inputs, labels

    def train(self, indices: torch.Tensor, batch_size: int, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in batch_indices(indices, batch_size, gen):
            yield self.inputs[idx], self.labels[idx]

    def eval(self, indices: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in batch_indices(indices, batch_size, None):
            yield self.inputs[idx], self.labels[idx]


@torch.inference_mode()
def compute_features(backbone: nn.Module, batches: ResidentBatches, indices: torch.Tensor, precision: Precision,
                     batch_size: int = 256) -> torch.Tensor:
    """A frozen backbone's outputs for `indices` rows, scattered into a (N_all, F) float32 tensor."""
    backbone.eval()
    out: torch.Tensor | None = None
    for idx in batch_indices(indices, batch_size, None):
        x, _ = batches.adapter.eval_batch(batches.rows(idx))
        with precision.autocast():
            feats = logits_of(backbone, precision.format(x)).float()
        if out is None:
            out = torch.zeros((len(batches.labels), feats.shape[1]), device=feats.device)
        out[idx] = feats
    if out is None:
        raise ValueError("no rows to compute features for")
    return out
