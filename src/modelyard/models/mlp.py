"""A multilayer perceptron over flattened pixels, in raw PyTorch: the baseline every image model must beat."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from modelyard.models import FamilyConfig, register_model


class MLPConfig(FamilyConfig):
    """Fully connected layers over the flattened, normalised pixels."""

    name: Literal["mlp"] = "mlp"
    hidden: int = Field(512, ge=8, le=16384, description="Units of each hidden layer.")
    depth: int = Field(2, ge=1, le=8, description="Number of hidden layers.")
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout after each hidden layer.")

    def builder_args(self, input_shape: tuple[int, int, int], num_classes: int) -> dict[str, Any]:
        h, w, c = input_shape
        return {"in_features": h * w * c, "num_classes": num_classes, "hidden": self.hidden, "depth": self.depth,
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


@register_model("mlp")
def build_mlp(in_features: int = 784, num_classes: int = 10, hidden: int = 512, depth: int = 2,
              dropout: float = 0.2) -> MLP:
    return MLP(in_features, num_classes, hidden, depth, dropout)
