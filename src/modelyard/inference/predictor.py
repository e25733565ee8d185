"""Load a saved model and predict; what counts as a usable input is the model's saved preprocessor's rule."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelyard.data.preprocess import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, InvalidInputError
from modelyard.data.text import batch_inputs
from modelyard.models.artifact import ModelSpec, load_model_dir

__all__ = ["MAX_IMAGE_PIXELS", "MIN_IMAGE_SIDE", "InvalidInputError", "Prediction", "Predictor", "decode_image"]


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    scores: dict[str, float]
    truncated: bool | None = None  # text only: the text was longer than the model reads (max_length tokens)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"label": self.label, "index": self.index, "scores": self.scores}
        if self.truncated is not None:
            out["truncated"] = self.truncated
        return out


def decode_image(data: bytes, spec: ModelSpec) -> np.ndarray:
    """Bytes of a PNG/JPEG/... of any size, gray or colour -> uint8 shaped like the model's training images."""
    return spec.preprocessor().decode(data)


class Predictor:
    """A model ready to predict batches of what it was trained on: uint8 images shaped like its training data,
    or texts (a list of strings)."""

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, device: str | torch.device = "cpu",
                 onnx_session: Any = None, backend_note: str = "") -> None:
        self.model = model.eval()
        self.spec = spec
        self.preprocessor = spec.preprocessor()
        self.device = torch.device(device)
        self._onnx = onnx_session  # an onnxruntime.InferenceSession running the forward pass instead of torch
        self.backend = "onnxruntime" if onnx_session is not None else "torch"
        self.backend_note = backend_note

    @property
    def modality(self) -> str:
        return self.spec.modality

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike[str], device: str | torch.device = "cpu", backend: str = "torch",
                 threads: int | None = None) -> Predictor:
        """`backend="onnxruntime"` runs the forward pass with the model's ONNX export when it passed its parity
        check at registration; otherwise torch runs it and `backend_note` says why."""
        model, spec = load_model_dir(Path(model_dir), device)
        if backend != "onnxruntime":
            return cls(model, spec, device)
        from modelyard.inference import onnx

        ok, note = onnx.usable(model_dir)
        if not ok:
            return cls(model, spec, device, backend_note=f"torch, not onnxruntime: {note}")
        return cls(model, spec, device, onnx_session=onnx.session(Path(model_dir) / onnx.ONNX_FILE, threads),
                   backend_note=note)

    @property
    def labels(self) -> list[str]:
        return self.spec.labels

    def check_batch(self, inputs: Any) -> Any:
        return self.preprocessor.check_batch(inputs)

    def decode(self, data: bytes) -> np.ndarray:
        return self.preprocessor.decode(data)

    @torch.inference_mode()
    def predict_proba(self, inputs: Any, batch_size: int = 512) -> np.ndarray:
        """uint8 images shaped like the training data, or texts -> class probabilities (N, K)."""
        if self.modality == "text":
            return self._text_proba(self.check_batch(inputs))[0]
        images = self.check_batch(inputs)
        out = []
        for start in range(0, len(images), batch_size):
            chunk = np.ascontiguousarray(images[start : start + batch_size])
            if self._onnx is not None:
                logits = torch.from_numpy(self._onnx.run(None, {"images": chunk})[0])
            else:
                logits = self.model(self.preprocessor(torch.from_numpy(chunk).to(self.device)))
            out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), dtype=np.float32)

    @torch.inference_mode()
    def _text_proba(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and truncated flags; texts of similar length are batched together (less padding)."""
        ids, lengths, truncated = self.preprocessor.tokenize(texts)
        order = np.argsort(lengths, kind="stable")
        probs = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            inputs = batch_inputs(torch.from_numpy(ids[rows]).long(), torch.from_numpy(lengths[rows]))
            if self._onnx is not None:
                logits = torch.from_numpy(self._onnx.run(None, {k: v.numpy() for k, v in inputs.items()})[0])
            else:
                logits = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
            probs[rows] = torch.softmax(logits.float(), dim=1).cpu().numpy()
        return probs, truncated

    def predict(self, inputs: Any) -> list[Prediction]:
        truncated: list[bool | None]
        if self.modality == "text":
            probs, flags = self._text_proba(self.check_batch(inputs))
            truncated = [bool(f) for f in flags]
        else:
            probs = self.predict_proba(inputs)
            truncated = [None] * len(probs)
        result = []
        for row, cut in zip(probs, truncated):
            idx = int(row.argmax())
            result.append(Prediction(self.labels[idx], idx, {label: round(float(p), 6) for label, p in zip(self.labels, row)},
                                     truncated=cut))
        return result
