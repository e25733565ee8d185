"""A multilayer perceptron over flattened pixels, in raw PyTorch: the baseline every image model must beat."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from modelyard.models import FamilyConfig


class MLPConfig(FamilyConfig):
    """Fully connected layers over the flattened, normalised pixels."""

    name: Literal["mlp"] = "mlp"
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    hidden: int = Field(512, ge=8, le=16384, description="Units of each hidden layer.")
    depth: int = Field(2, ge=1, le=8, description="Number of hidden layers.")
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout after each hidden layer.")

    def builder_args(self, model_input: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
        in_features = model_input["height"] * model_input["width"] * model_input["in_channels"]
        return {"in_features": in_features, "num_classes": num_classes, "hidden": self.hidden, "depth": self.depth,
                "dropout": self.dropout}


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: int, depth: int, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]  # (B, C, H, W) -> (B, C*H*W)
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.net(x)


def build(in_features: int, num_classes: int, hidden: int, depth: int, dropout: float) -> MLP:
    return MLP(in_features, num_classes, hidden, depth, dropout)


# What `modelyard tune` varies by default (modelyard.tuning.space): SGD's rate and decay, width, depth, dropout,
# the batch, how long, and the two image augmentations an MLP over pixels can use.
SEARCH_SPACE = {
    "train.learning_rate": {"loguniform": [0.01, 0.3]},
    "train.weight_decay": {"loguniform": [1e-5, 1e-3]},
    "train.batch_size": {"choice": [64, 128, 256]},
    "train.epochs": {"int": [15, 40]},
    "model.hidden": {"choice": [256, 512, 1024]},
    "model.depth": {"int": [1, 3]},
    "model.dropout": {"uniform": [0.0, 0.5]},
    "prepare.augment.crop_padding": {"choice": [0, 1, 2]},
    "prepare.augment.hflip_prob": {"uniform": [0.0, 0.5]},
}

Config = MLPConfig
