"""Model families: a typed config and an `nn.Module` per family, behind one builder registry.

Each family module defines a pydantic config (a member of the `model` union in `modelyard.config`, keyed by
`name`) and registers a builder taking plain keyword arguments: what `model.json` stores, so a Predictor can
rebuild any saved model without training code. Families whose dependencies are heavy (an ImageNet backbone,
a Hugging Face encoder) import them inside their builder. Adding a family is one module plus its entry in
`FAMILY_MODULES` and the union.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict
from torch import nn

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, Builder] = {}
FAMILY_MODULES = ("cnn", "mlp", "resnet", "transfer", "text")


class FamilyConfig(BaseModel):
    """What every family's config answers; the defaults suit a model trained from scratch on the data as is."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def input_shape(self, data_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """(height, width, channels) the model takes, given the stored data's (the preprocessor resizes)."""
        return data_shape

    def normalization(self) -> tuple[list[float], list[float], str] | None:
        """Fixed (mean, std, why) per input channel, or None to fit them on the training split."""
        return None

    def builder_args(self, input_shape: tuple[int, int, int], num_classes: int) -> dict[str, Any]:
        raise NotImplementedError

    def prepare(self, model: nn.Module) -> None:
        """Load pretrained weights, freeze what is frozen: called once, before training, not at load time."""

    def param_groups(self, model: nn.Module) -> list[tuple[str, list[nn.Parameter], float]]:
        """(group name, parameters, learning-rate factor); frozen parameters are left out."""
        return [("all", [p for p in model.parameters() if p.requires_grad], 1.0)]

    def task_name(self) -> str:
        """The model part of the registered name: `<dataset>-<task_name>`."""
        return self.name  # type: ignore[attr-defined]


def register_model(name: str) -> Callable[[Builder], Builder]:
    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is already registered")
        _REGISTRY[name] = builder
        return builder

    return decorator


def available_models() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model family with its arguments."""
    _load_families()
    try:
        builder = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model '{name}'; available: {', '.join(sorted(_REGISTRY))}") from None
    return builder(**kwargs)


def _load_families() -> None:
    # Importing a family module registers it; done on first use, not at package import.
    for module in FAMILY_MODULES:
        importlib.import_module(f"{__name__}.{module}")
