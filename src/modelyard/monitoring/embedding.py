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


_CAUGHT = threading.local()  # per thread: the WithEmbedding running now, and what its head was given


class WithEmbedding(nn.Module):
    """A Predictor's graph (raw inputs -> logits) that also returns the projected penultimate embedding. The
    head's input is caught by one hook, per thread, only while this module runs: the plain graph and other
    threads' forward passes through the same model are not touched. (The state lives in a module-level
    thread-local, so the model still pickles: MLflow pickles the pyfunc that holds it.)"""

    def __init__(self, graph: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.graph, self.head = graph, head
        self.register_buffer("projection", projection(head.in_features), persistent=False)
        head.register_forward_pre_hook(self._catch)

    def _catch(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        if getattr(_CAUGHT, "owner", None) is self:
            _CAUGHT.features = inputs[0]

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        _CAUGHT.owner, _CAUGHT.features = self, None
        try:
            logits = self.graph(*args, **kwargs)
            features = _CAUGHT.features
        finally:
            _CAUGHT.owner = _CAUGHT.features = None
        return logits, features.float().flatten(1) @ self.projection
