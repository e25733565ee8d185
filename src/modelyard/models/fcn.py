"""A fully convolutional network over time (Wang, Yan & Oates 2017, "Time series classification from scratch
with deep neural networks"): three 1-D convolution blocks, global average pooling over the frames, a linear
head. Series of different lengths share a batch: padding is masked out of the batch-norm statistics and of
the pooling, so a series is classified the same alone or padded beside longer ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from modelyard.models import FamilyConfig


class FCNConfig(FamilyConfig):
    """1-D convolutions over the frames of a series, batch-normed, globally average-pooled."""

    name: Literal["fcn"] = "fcn"
    modalities: ClassVar[tuple[str, ...]] = ("series",)
    widths: list[int] = Field([128, 256, 128], min_length=1, max_length=6,
                              description="Channels of each convolution block.")
    kernels: list[int] = Field([7, 5, 3], min_length=1, max_length=6,
                               description="Kernel size (frames, odd) of each block; as many as widths.")
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout before the head.")

    @field_validator("kernels")
    @classmethod
    def _odd(cls, v: list[int]) -> list[int]:
        if any(k < 1 or k % 2 == 0 for k in v):
            raise ValueError(f"kernel sizes must be odd and positive (a frame's neighbours on both sides), got {v}")
        return v

    def builder_args(self, model_input: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
        if len(self.widths) != len(self.kernels):
            raise ValueError(f"model.widths has {len(self.widths)} blocks but model.kernels {len(self.kernels)}")
        return {"in_features": model_input["in_features"], "num_classes": num_classes, "widths": list(self.widths),
                "kernels": list(self.kernels), "dropout": self.dropout}


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """Batch norm whose training statistics come from the real frames only (padding left out); in eval mode the
    plain running statistics, as nn.BatchNorm1d."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # x (B, C, T), mask (B, 1, T)
        if not self.training:
            return super().forward(x)
        count = mask.sum().clamp(min=1)
        mean = (x * mask).sum(dim=(0, 2)) / count  # (C,)
        var = (((x - mean[None, :, None]) * mask) ** 2).sum(dim=(0, 2)) / count
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * count / (count - 1).clamp(min=1), self.momentum)
            self.num_batches_tracked += 1
        x = (x - mean[None, :, None]) * torch.rsqrt(var[None, :, None] + self.eps)
        return x * self.weight[None, :, None] + self.bias[None, :, None]


class FCN(nn.Module):
    def __init__(self, in_features: int, num_classes: int, widths: list[int], kernels: list[int], dropout: float) -> None:
        super().__init__()
        sizes = [in_features, *widths]
        self.convs = nn.ModuleList(nn.Conv1d(c_in, c_out, k, padding=k // 2, bias=False)
                                   for c_in, c_out, k in zip(sizes[:-1], sizes[1:], kernels))
        self.norms = nn.ModuleList(MaskedBatchNorm1d(c) for c in widths)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask[:, None, :].to(values.dtype)  # (B, 1, T)
        x = values.transpose(1, 2)  # (B, T, C) -> (B, C, T)
        for conv, norm in zip(self.convs, self.norms):
            x = F.relu(norm(conv(x * mask), mask)) * mask
        pooled = x.sum(dim=2) / mask.sum(dim=2).clamp(min=1)  # (B, widths[-1]): the real frames' mean
        return self.head(self.dropout(pooled))


def build(in_features: int, num_classes: int, widths: list[int], kernels: list[int], dropout: float) -> FCN:
    return FCN(in_features, num_classes, widths, kernels, dropout)


# What `modelyard tune` varies by default (modelyard.tuning.space).
SEARCH_SPACE = {
    "train.learning_rate": {"loguniform": [3e-4, 1e-2]},
    "train.weight_decay": {"loguniform": [1e-5, 1e-2]},
    "train.batch_size": {"choice": [16, 32, 64]},
    "train.warmup_epochs": {"uniform": [0.0, 4.0]},
    "model.dropout": {"uniform": [0.0, 0.5]},
    "prepare.augment.jitter_std": {"uniform": [0.0, 0.1]},
    "prepare.augment.scale_std": {"uniform": [0.0, 0.2]},
}

Config = FCNConfig
