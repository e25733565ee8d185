"""A small batch-norm CNN trained from scratch, for 28x28 grayscale images (Fashion-MNIST)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from modelyard.models import register_model


@dataclass
class CNNConfig:
    in_channels: int = 1
    num_classes: int = 10
    width: int = 32  # channels of the first block; doubled after each pooling
    dropout: float = 0.1


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class CNN(nn.Module):
    """conv-bn-relu x2 | pool | x2 | pool | x1 | global average pool | dropout | linear."""

    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__()
        w = cfg.width
        self.features = nn.Sequential(
            *_conv_bn(cfg.in_channels, w), *_conv_bn(w, w), nn.MaxPool2d(2),  # (B, w, H/2, W/2)
            *_conv_bn(w, 2 * w), *_conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),  # (B, 2w, H/4, W/4)
            *_conv_bn(2 * w, 4 * w),  # (B, 4w, H/4, W/4)
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(4 * w, cfg.num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.head(self.features(x))


@register_model("cnn")
def build_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 32, dropout: float = 0.1, **_: object) -> CNN:
    return CNN(CNNConfig(in_channels=in_channels, num_classes=num_classes, width=width, dropout=dropout))
