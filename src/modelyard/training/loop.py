"""Plain PyTorch training and evaluation: the same code runs in one process or in N Ray workers.

One loop for every model family. What differs per modality is the *batch adapter*, an object whose
`train(indices, batch_size, gen)` and `eval(indices, batch_size)` yield `(inputs, labels)` on the training
device: `ImageBatches` gathers a batch of resident uint8 images by index and augments and preprocesses it
there (which beats a per-sample DataLoader by a wide margin for datasets of this size); `TensorBatches`
serves precomputed tensors (a frozen backbone's cached features); `TextBatches` cuts resident token ids
to each batch's longest text and augments them at the token level. Inputs may be a mapping of tensors
(token ids and attention mask) and a model may return an object with `.logits` (Hugging Face).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelyard.data.augment import AugmentPolicy
from modelyard.data.preprocess import ImagePreprocessor

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

    def format(self, x: Any) -> Any:
        if self.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


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


def logits_of(model: nn.Module, x: Any) -> torch.Tensor:
    """Call the model on a tensor or a mapping of tensors; accept a bare tensor or an output with `.logits`."""
    out = model(**x) if isinstance(x, Mapping) else model(x)
    return getattr(out, "logits", out)


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
        logits = logits_of(model, precision.format(x))
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
) -> dict[str, float]:
    """One pass over `batches` (this worker's shard); an optimiser step every `accum_steps` micro-batches
    (DDP's gradient all-reduce only on those), with optional gradient clipping. Returns loss/accuracy sums."""
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


def steps_per_epoch(n: int, batch_size: int) -> int:
    return n // batch_size


# ---- batch adapters ---------------------------------------------------------------------------------

class ImageBatches:
    """Resident uint8 images and labels on the training device; batches gathered by index, augmented (train)
    and preprocessed there by the model's preprocessor."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, preprocessor: ImagePreprocessor,
                 policy: AugmentPolicy) -> None:
        self.images, self.labels = images, labels
        self.preprocessor, self.policy = preprocessor, policy

    def train(self, indices: torch.Tensor, batch_size: int, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in batch_indices(indices, batch_size, gen):
            yield self.preprocessor.train_batch(self.images[idx], self.policy, gen), self.labels[idx]

    def eval(self, indices: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in batch_indices(indices, batch_size, None):
            yield self.preprocessor(self.images[idx]), self.labels[idx]


class StreamingBatches:
    """Batches streamed from this worker's Ray Data shards (uint8 image tensor column + label), augmented and
    preprocessed on the device like resident ones. The shard decides the rows: `indices` are ignored."""

    def __init__(self, train_shard: Any, val_shard: Any, preprocessor: ImagePreprocessor, policy: AugmentPolicy,
                 device: torch.device, seed: int = 0) -> None:
        self.train_shard, self.val_shard = train_shard, val_shard
        self.preprocessor, self.policy, self.device, self.seed = preprocessor, policy, device, seed
        self.epoch = 0

    def train(self, indices: torch.Tensor, batch_size: int, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.epoch += 1
        for batch in self.train_shard.iter_torch_batches(
            batch_size=batch_size, drop_last=True, device=self.device,
            local_shuffle_buffer_size=max(4 * batch_size, 1000), local_shuffle_seed=self.seed * 1000 + self.epoch,
        ):
            yield self.preprocessor.train_batch(batch["image"], self.policy, gen), batch["label"]

    def eval(self, indices: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.val_shard.iter_torch_batches(batch_size=batch_size, device=self.device):
            yield self.preprocessor(batch["image"]), batch["label"]


class TextBatches:
    """Token ids of every text, padded to the longest, resident on the training device; a batch is cut to its
    own longest text (dynamic padding) and augmented there at the token level (special tokens kept)."""

    def __init__(self, ids: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor, policy: Any,
                 special_ids: list[int], pad_id: int) -> None:
        self.ids, self.lengths, self.labels, self.policy = ids, lengths, labels, policy
        self.protected = torch.tensor(special_ids, dtype=ids.dtype, device=ids.device)
        self.pad_id = pad_id

    def _batch(self, idx: torch.Tensor, gen: torch.Generator | None) -> dict[str, torch.Tensor]:
        from modelyard.data.text import batch_inputs, token_delete, token_swap

        ids, lengths = self.ids[idx], self.lengths[idx]
        if gen is not None and self.policy.token_delete_prob > 0:
            ids, lengths = token_delete(ids, lengths, self.policy.token_delete_prob, self.protected, self.pad_id, gen)
        if gen is not None and self.policy.token_swap_prob > 0:
            ids = token_swap(ids, lengths, self.policy.token_swap_prob, self.protected, gen)
        return batch_inputs(ids, lengths)

    def train(self, indices: torch.Tensor, batch_size: int, gen: torch.Generator) -> Iterator[tuple[Any, torch.Tensor]]:
        for idx in batch_indices(indices, batch_size, gen):
            yield self._batch(idx, gen), self.labels[idx]

    def eval(self, indices: torch.Tensor, batch_size: int) -> Iterator[tuple[Any, torch.Tensor]]:
        for idx in batch_indices(indices, batch_size, None):
            yield self._batch(idx, None), self.labels[idx]


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
def compute_features(backbone: nn.Module, batches: ImageBatches, indices: torch.Tensor, precision: Precision,
                     batch_size: int = 256) -> torch.Tensor:
    """A frozen backbone's outputs for `indices` rows, scattered into a (N_all, F) float32 tensor."""
    backbone.eval()
    out: torch.Tensor | None = None
    for idx in batch_indices(indices, batch_size, None):
        with precision.autocast():
            feats = backbone(precision.format(batches.preprocessor(batches.images[idx]))).float()
        if out is None:
            out = torch.zeros((len(batches.labels), feats.shape[1]), device=feats.device)
        out[idx] = feats
    if out is None:
        raise ValueError("no rows to compute features for")
    return out
