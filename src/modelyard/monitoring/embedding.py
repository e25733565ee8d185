"""What drift is measured on: the model's penultimate embedding (the classifier head's input), through a
fixed random projection to `DIM` numbers.

Drift on raw pixels or token ids says little about what the model sees; the head's input is what it decides
from. A seeded Gaussian projection (Johnson-Lindenstrauss) keeps distances between embeddings roughly
intact while making every family's representation the same small size, so a traffic log row stays compact
and one test fits all families. The projection is part of the exported ONNX graph (a second output,
`embedding`), so the ONNX Runtime backend returns it with the logits.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import nn

DIM = 32
SEED = 20261130


def classifier_head(model: nn.Module, num_classes: int) -> nn.Linear | None:
    """The last `nn.Linear` that maps to the classes: its input is the penultimate embedding."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    return heads[-1] if heads else None


def projection(width: int, dim: int = DIM) -> torch.Tensor:
    """The fixed (width, dim) projection: the same for every version of every task of this width."""
    return torch.randn(width, dim, generator=torch.Generator().manual_seed(SEED)) / dim ** 0.5


class WithEmbedding(nn.Module):
    """A Predictor's graph (raw inputs -> logits) that also returns the projected penultimate embedding. The
    head's input is caught by one hook, per thread, only while this module runs: the plain graph and other
    threads' forward passes through the same model are not touched."""

    def __init__(self, graph: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.graph, self.head = graph, head
        self.register_buffer("projection", projection(head.in_features), persistent=False)
        self._caught = threading.local()
        head.register_forward_pre_hook(self._catch)

    def _catch(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        if getattr(self._caught, "on", False):
            self._caught.features = inputs[0]

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        self._caught.on, self._caught.features = True, None
        try:
            logits = self.graph(*args, **kwargs)
            features = self._caught.features
        finally:
            self._caught.on, self._caught.features = False, None
        return logits, features.float().flatten(1) @ self.projection
