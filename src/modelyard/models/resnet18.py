"""torchvision's ResNet-18 trained from scratch; with the CIFAR stem (3x3 conv, stride 1, no max-pool)
for 32x32 inputs, as in He et al.'s CIFAR experiments, so the last stage still sees 4x4 maps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field
from torch import nn

from modelyard.models import FamilyConfig


class ResNet18Config(FamilyConfig):
    """torchvision ResNet-18 from random weights."""

    name: Literal["resnet18"] = "resnet18"
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    stem: Literal["cifar", "imagenet"] = Field(
        "cifar", description="cifar: 3x3 stride-1 first conv and no max-pool (small images); imagenet: 7x7/2 + pool."
    )

    def builder_args(self, model_input: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
        return {"in_channels": model_input["in_channels"], "num_classes": num_classes, "stem": self.stem}


def build(in_channels: int, num_classes: int, stem: str) -> nn.Module:
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


# What `modelyard tune` varies by default (modelyard.tuning.space).
SEARCH_SPACE = {
    "train.learning_rate": {"loguniform": [0.02, 0.4]},
    "train.weight_decay": {"loguniform": [1e-5, 1e-3]},
    "train.batch_size": {"choice": [128, 256, 512]},
    "train.warmup_epochs": {"uniform": [0.0, 3.0]},
    "train.label_smoothing": {"uniform": [0.0, 0.2]},
    "prepare.augment.crop_padding": {"choice": [0, 2, 4]},
    "prepare.augment.erasing_prob": {"uniform": [0.0, 0.5]},
}

Config = ResNet18Config
