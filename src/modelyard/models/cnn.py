"""A small batch-norm CNN trained from scratch: the project's default image model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from modelyard.models import FamilyConfig


class CNNConfig(FamilyConfig):
    """A 5-layer batch-norm CNN trained from scratch."""

    name: Literal["cnn"] = "cnn"
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    width: int = Field(32, ge=4, le=1024, description="Channels of the first block; doubled after each pooling.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before the classifier.")

    def builder_args(self, model_input: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
        return {"in_channels": model_input["in_channels"], "num_classes": num_classes, "width": self.width,
                "dropout": self.dropout}


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class CNN(nn.Module):
    """conv-bn-relu x2 | pool | x2 | pool | x1 | global average pool | dropout | linear."""

    def __init__(self, in_channels: int, num_classes: int, width: int, dropout: float) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv_bn(in_channels, w), *_conv_bn(w, w), nn.MaxPool2d(2),  # (B, w, H/2, W/2)
            *_conv_bn(w, 2 * w), *_conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),  # (B, 2w, H/4, W/4)
            *_conv_bn(2 * w, 4 * w),  # (B, 4w, H/4, W/4)
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * w, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.head(self.features(x))


def build(in_channels: int, num_classes: int, width: int, dropout: float) -> CNN:
    return CNN(in_channels, num_classes, width, dropout)


# What `modelyard tune` varies by default (modelyard.tuning.space).
SEARCH_SPACE = {
    "train.learning_rate": {"loguniform": [0.02, 0.3]},
    "train.weight_decay": {"loguniform": [1e-5, 2e-3]},
    "train.batch_size": {"choice": [64, 128, 256]},
    "train.warmup_epochs": {"uniform": [0.0, 2.0]},
    "model.width": {"choice": [16, 32, 48]},
    "model.dropout": {"uniform": [0.0, 0.4]},
    "prepare.augment.crop_padding": {"choice": [0, 1, 2, 3]},
    "prepare.augment.erasing_prob": {"uniform": [0.0, 0.5]},
}

Config = CNNConfig
