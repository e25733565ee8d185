"""Plain PyTorch training and evaluation steps: the same code runs in one process or in N Ray workers.

Data stay resident on the training device as uint8 tensors; each step gathers a batch by index and
augments it there (see `modelyard.data.augment`), which beats a per-sample DataLoader by a wide margin
for datasets of this size.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from modelyard.data.augment import AugmentPolicy, augment_batch, normalize

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    """How a step computes: autocast dtype (or none), and a GradScaler for fp16."""

    device: torch.device
    mode: str = "none"  # none | bf16 | fp16
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.mode == "fp16" and self.device.type != "cuda":
            raise ValueError("mixed_precision=fp16 needs a CUDA device; use bf16 on CPU")
        self.scaler = torch.amp.GradScaler("cuda") if self.mode == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.mode == "none":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=AMP_DTYPES[self.mode])

    def format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def build_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum; no weight decay on batch-norm and bias parameters."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to zero, stepped once per batch."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

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


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step; returns (summed loss, number correct) as tensors (no host sync)."""
    with precision.autocast():
        logits = model(precision.format(x))
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    if precision.scaler is not None:
        precision.scaler.scale(loss).backward()
        precision.scaler.step(optimizer)
        precision.scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach() * len(y), (logits.argmax(1) == y).sum()


@torch.no_grad()
def eval_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: Precision) -> tuple[torch.Tensor, torch.Tensor]:
    with precision.autocast():
        logits = model(precision.format(x))
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
    return loss, (logits.argmax(1) == y).sum()


def train_epoch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    *,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    precision: Precision,
    policy: AugmentPolicy,
    mean: float,
    std: float,
    gen: torch.Generator,
    label_smoothing: float = 0.0,
) -> dict[str, float]:
    """One pass over `indices` (this worker's shard) with augmentation; returns loss/accuracy sums."""
    model.train()
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    seen = 0
    for idx in batch_indices(indices, batch_size, gen):
        x = augment_batch(images[idx], policy, gen, mean, std)
        loss, hits = train_step(model, x, labels[idx], optimizer, precision, label_smoothing)
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss
        correct += hits
        seen += len(idx)
    return {"loss_sum": float(loss_sum), "correct": float(correct), "count": float(seen)}


def evaluate_indices(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    *,
    batch_size: int,
    precision: Precision,
    mean: float,
    std: float,
) -> dict[str, float]:
    """Loss/accuracy sums over `indices`, no augmentation."""
    model.eval()
    loss_sum, correct = 0.0, 0.0
    for idx in batch_indices(indices, batch_size, None):
        loss, hits = eval_step(model, normalize(images[idx], mean, std), labels[idx], precision)
        loss_sum += float(loss)
        correct += float(hits)
    return {"loss_sum": loss_sum, "correct": correct, "count": float(len(indices))}


def steps_per_epoch(n: int, batch_size: int) -> int:
    return n // batch_size
