"""A saved model: weights plus everything needed to rebuild and feed it, without training code.

    <model_dir>/model.pt     state_dict
    <model_dir>/model.json   {"family", "args", "labels", "preprocessing": {"kind": <modality>, ...}, "extra"}

`preprocessing` is the fitted preprocessor of the model's modality (normalisation statistics and sizes, or the
tokenizer itself): the one definition of how inputs become tensors, used by evaluation, the MLflow pyfunc,
ONNX export and serving alike.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelyard.modalities import Modality, Preprocessor, get_modality
from modelyard.models import build_model

FORMAT_VERSION = 2


@dataclass(frozen=True)
class ModelSpec:
    family: str
    args: dict[str, Any]
    labels: list[str]
    preprocessing: dict[str, Any]  # Preprocessor.to_dict()
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def build(self) -> nn.Module:
        return build_model(self.family, **self.args)

    @property
    def modality(self) -> Modality:
        return get_modality(self.preprocessing.get("kind", "image"))

    def preprocessor(self) -> Preprocessor:
        """The fitted preprocessor the model was trained with."""
        return self.modality.preprocessor_from_dict(self.preprocessing)


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
    version = doc.get("format_version")
    if version == 1:
        doc = _from_v1(doc)
    elif version != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported model format {version!r}")
    return ModelSpec(**doc)


def _from_v1(doc: dict[str, Any]) -> dict[str, Any]:
    """Format 1 (Fashion-MNIST CNNs registered before the task layer): one gray channel, scalar statistics."""
    shape = [doc["input"]["height"], doc["input"]["width"], doc["input"].get("channels", 1)]
    norm = doc["normalization"]
    preprocessing = {"kind": "image", "source_shape": shape, "input_shape": shape, "mean": [norm["mean"]],
                     "std": [norm["std"]], "normalization": "fitted on the training split"}
    args = {k: v for k, v in doc["args"].items() if k not in ("image_size",)}
    return {"family": doc["family"], "args": args, "labels": doc["labels"], "preprocessing": preprocessing,
            "extra": doc.get("extra", {}), "format_version": FORMAT_VERSION}


def load_model_dir(model_dir: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model from its spec and load its weights; returns it in eval mode."""
    spec = read_spec(model_dir)
    model = spec.build()
    state = torch.load(Path(model_dir) / "model.pt", map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), spec
