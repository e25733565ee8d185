"""A raw-PyTorch multilayer perceptron over flattened pixels: the baseline every image model must beat."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from modelyard.models import register_model


@dataclass
class MLPConfig:
    in_features: int = 28 * 28
    num_classes: int = 10
    hidden: int = 256
    dropout: float = 0.1


class MLP(nn.Module):
    def __init__(self, cfg: MLPConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),  # (B, C, H, W) -> (B, C*H*W)
            nn.Linear(cfg.in_features, cfg.hidden), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.net(x)


@register_model("mlp")
def build_mlp(
    in_channels: int = 1, num_classes: int = 10, width: int = 256, dropout: float = 0.1,
    image_size: tuple[int, int] = (28, 28), **_: object,
) -> MLP:
    h, w = image_size
    return MLP(MLPConfig(in_features=in_channels * h * w, num_classes=num_classes, hidden=width, dropout=dropout))
