"""Load a saved model and predict; what counts as a usable input is the model's saved preprocessor's rule."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modelyard.data.preprocess import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, InvalidInputError
from modelyard.models.artifact import ModelSpec, load_model_dir

__all__ = ["MAX_IMAGE_PIXELS", "MIN_IMAGE_SIDE", "InvalidInputError", "Prediction", "Predictor", "decode_image"]


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    scores: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        return {"label": self.label, "index": self.index, "scores": self.scores}


def decode_image(data: bytes, spec: ModelSpec) -> np.ndarray:
    """Bytes of a PNG/JPEG/... of any size, gray or colour -> uint8 shaped like the model's training images."""
    return spec.preprocessor().decode(data)


class Predictor:
    """A model ready to predict batches of uint8 images shaped like its training data."""

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, device: str | torch.device = "cpu") -> None:
        self.model = model.eval()
        self.spec = spec
        self.preprocessor = spec.preprocessor()
        self.device = torch.device(device)

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike[str], device: str | torch.device = "cpu") -> Predictor:
        model, spec = load_model_dir(Path(model_dir), device)
        return cls(model, spec, device)

    @property
    def labels(self) -> list[str]:
        return self.spec.labels

    def check_batch(self, images: np.ndarray) -> np.ndarray:
        return self.preprocessor.check_batch(images)

    def decode(self, data: bytes) -> np.ndarray:
        return self.preprocessor.decode(data)

    @torch.inference_mode()
    def predict_proba(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """uint8 images shaped like the training data -> class probabilities (N, K)."""
        images = self.check_batch(images)
        out = []
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(self.device)
            logits = self.model(self.preprocessor(x))
            out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), dtype=np.float32)

    def predict(self, images: np.ndarray) -> list[Prediction]:
        probs = self.predict_proba(images)
        result = []
        for row in probs:
            idx = int(row.argmax())
            result.append(Prediction(self.labels[idx], idx, {label: round(float(p), 6) for label, p in zip(self.labels, row)}))
        return result
