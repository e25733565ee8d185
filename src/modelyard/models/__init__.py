"""Model families behind one builder registry: `build_model("cnn", in_channels=1, num_classes=10, ...)`.

A family registers a builder taking plain keyword arguments (what `model.json` stores), so a Predictor can
rebuild any saved model from its spec without importing training code. Families whose dependencies are
heavy (a Hugging Face encoder, an ImageNet backbone) import them inside their builder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, Builder] = {}


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
    from modelyard.models import cnn, mlp  # noqa: F401
