"""Plain PyTorch training and evaluation steps: the same code runs in one process or in N Ray workers.

Data stay resident on the training device as uint8 tensors; each step gathers a batch by index and
augments it there (see `modelyard.data.augment`), which beats a per-sample DataLoader by a wide margin
for datasets of this size.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from modelyard.data.augment import AugmentPolicy, augment_batch, normalize

log = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Measured on a 2-core AMD EPYC with AVX2 only: the CNN's training step ran 12.8x slower under bf16
# autocast than in fp32 (57 vs 727 samples/s); with AVX512_BF16 it ran 2.6x faster instead.
EMULATED_BF16_SLOWDOWN = 12.8


def cpu_bf16_support() -> str | None:
    """The native bf16 instruction set of this CPU ("AMX" or "AVX512_BF16"), or None when bf16 is emulated.

    Uses torch's own probes where the build has them, else the flags the kernel reports in /proc/cpuinfo.
    """
    cpu = getattr(torch._C, "_cpu", None)
    amx = getattr(cpu, "_is_amx_tile_supported", None)
    avx512_bf16 = getattr(cpu, "_is_avx512_bf16_supported", None)
    if amx is not None and avx512_bf16 is not None:
        return "AMX" if amx() else "AVX512_BF16" if avx512_bf16() else None
    flags = _cpuinfo_flags()
    if "amx_bf16" in flags:
        return "AMX"
    return "AVX512_BF16" if "avx512_bf16" in flags else None


def _cpuinfo_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def resolve_precision(mode: str, device: torch.device) -> tuple[str, str]:
    """The precision a step will use on `device` for the configured `mode`, and why.

    `auto` picks bf16 where the hardware computes it natively (a GPU with bf16, a CPU with AVX512_BF16 or
    AMX) and fp32 ("none") elsewhere. An explicit bf16 on a CPU that emulates it is honoured, with a warning.
    """
    if device.type == "cuda":
        if mode == "auto":
            if torch.cuda.is_bf16_supported():
                return "bf16", f"{torch.cuda.get_device_name(device)} supports bf16"
            return "none", f"{torch.cuda.get_device_name(device)} has no bf16; fp32"
        return mode, "as configured"
    if mode == "fp16":
        raise ValueError("mixed_precision=fp16 needs a CUDA device; use auto, bf16 or none on CPU")
    native = cpu_bf16_support()
    if mode == "auto":
        if native:
            return "bf16", f"CPU has native bf16 ({native})"
        return "none", "CPU has no native bf16 (no AVX512_BF16 or AMX); fp32"
    if mode == "bf16" and not native:
        log.warning(
            "train.mixed_precision=bf16 on a CPU without native bf16 (no AVX512_BF16 or AMX): bf16 is emulated "
            "and a step typically runs about %.0fx slower than fp32; set train.mixed_precision=auto or none",
            EMULATED_BF16_SLOWDOWN,
        )
        return "bf16", "as configured (emulated on this CPU: slow)"
    return mode, "as configured"


@dataclass
class Precision:
    """How a step computes: autocast dtype (or none), and a GradScaler for fp16."""

    device: torch.device
    mode: str = "none"  # none | bf16 | fp16 (resolve "auto" with `resolve_precision` first)
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("none", *AMP_DTYPES):
            raise ValueError(f"precision mode must be none, bf16 or fp16, got {self.mode!r}")
        if self.mode == "fp16" and self.device.type != "cuda":
            raise ValueError("mixed_precision=fp16 needs a CUDA device; use auto, bf16 or none on CPU")
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
