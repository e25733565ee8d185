"""A saved model: weights plus everything needed to rebuild and feed it, without training code.

    <model_dir>/model.pt     state_dict
    <model_dir>/model.json   {"family", "args", "labels", "input": {...}, "normalization": {...}}
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelyard.models import build_model

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelSpec:
    family: str
    args: dict[str, Any]
    labels: list[str]
    input: dict[str, Any]  # {"kind": "image", "channels": 1, "height": 28, "width": 28, "dtype": "uint8"}
    normalization: dict[str, float]  # {"mean": ..., "std": ...}
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def build(self) -> nn.Module:
        return build_model(self.family, **self.args)


def save_model_dir(model: nn.Module, spec: ModelSpec, model_dir: str | os.PathLike[str]) -> Path:
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, model_dir / "model.pt")
    (model_dir / "model.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return model_dir


def read_spec(model_dir: str | os.PathLike[str]) -> ModelSpec:
    path = Path(model_dir) / "model.json"
    if not path.is_file():
        raise FileNotFoundError(f"not a model directory: {path} is missing")
    doc = json.loads(path.read_text())
    if doc.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported model format {doc.get('format_version')!r}")
    return ModelSpec(**doc)


def load_model_dir(model_dir: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model from its spec and load its weights; returns it in eval mode."""
    spec = read_spec(model_dir)
    model = spec.build()
    state = torch.load(Path(model_dir) / "model.pt", map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), spec
