"""Load a saved model and predict; what counts as a usable input is the rule of its saved preprocessor."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelyard.artifact import ModelSpec, load_model_dir
from modelyard.inference.onnx_runtime import ONNX_FILE, TENSORRT, session, tensorrt_session, usable
from modelyard.monitoring.embedding import DIM, WithEmbedding, classifier_head

__all__ = ["Prediction", "Predictor"]


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    scores: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)  # what the preprocessor notes of the input (text: truncated)

    def to_dict(self) -> dict[str, object]:
        return {"label": self.label, "index": self.index, "scores": self.scores, **self.extra}


class Predictor:
    """A model ready to predict batches of the inputs it was trained on (uint8 images shaped like its training
    data, a list of texts, a list of series): its preprocessor checks them and feeds the model's graph."""

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, device: str | torch.device = "cpu",
                 onnx_session: Any = None, backend_note: str = "") -> None:
        self.model = model.eval()
        self.device = torch.device(device)
        self.spec = spec
        self.preprocessor = spec.preprocessor()
        self.graph = self.preprocessor.graph(self.model).eval()  # raw inputs -> logits, preprocessing inside
        head = classifier_head(self.model, len(spec.labels))
        # raw inputs -> (logits, projected penultimate embedding), for the traffic log and drift
        self.embedding_graph = WithEmbedding(self.graph, head).to(self.device).eval() if head is not None else None
        self._onnx = onnx_session  # an onnxruntime.InferenceSession running the graph instead of torch
        self.backend = "torch"
        if onnx_session is not None:
            self.backend = "tensorrt" if TENSORRT in onnx_session.get_providers() else "onnxruntime"
        self.backend_note = backend_note
        self.has_embeddings = (any(o.name == "embedding" for o in onnx_session.get_outputs())
                               if onnx_session is not None else self.embedding_graph is not None)

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike[str], device: str | torch.device = "cpu", backend: str = "torch",
                 threads: int | None = None) -> Predictor:
        """`backend="onnxruntime"` runs the graph with the model's ONNX export when it passed its parity check at
        registration; otherwise torch runs it and `backend_note` says why. `backend="tensorrt"` runs that export
        on ONNX Runtime's TensorRT execution provider where it can start, and on ONNX Runtime's CPU provider
        otherwise (the note says why)."""
        model, spec = load_model_dir(Path(model_dir), device)
        if backend not in ("onnxruntime", "tensorrt"):
            return cls(model, spec, device)
        ok, note = usable(model_dir)
        if not ok:
            return cls(model, spec, device, backend_note=f"torch, not {backend}: {note}")
        if backend == "onnxruntime":
            return cls(model, spec, device, backend_note=note,
                       onnx_session=session(Path(model_dir) / ONNX_FILE, threads))
        onnx, why_not = tensorrt_session(Path(model_dir) / ONNX_FILE, threads)
        return cls(model, spec, device, onnx_session=onnx,
                   backend_note=note if why_not is None else f"onnxruntime on the CPU, not tensorrt: {why_not}; {note}")

    @property
    def labels(self) -> list[str]:
        return self.spec.labels

    def check_batch(self, inputs: Any) -> Any:
        return self.preprocessor.check_batch(inputs)

    def logits(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        """The graph's logits for one batch of graph inputs (what `preprocessor.feeds` yields)."""
        if self._onnx is not None:
            return torch.from_numpy(self._onnx.run(["logits"], {k: v.numpy() for k, v in feeds.items()})[0])
        return self.graph(**{k: v.to(self.device) for k, v in feeds.items()})

    def logits_and_embedding(self, feeds: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`logits`, and the projected penultimate embedding (None where the model or its export has none)."""
        if not self.has_embeddings:
            return self.logits(feeds), None
        if self._onnx is not None:
            logits, embedding = self._onnx.run(["logits", "embedding"], {k: v.numpy() for k, v in feeds.items()})
            return torch.from_numpy(logits), torch.from_numpy(embedding)
        return self.embedding_graph(**{k: v.to(self.device) for k, v in feeds.items()})

    @torch.inference_mode()
    def predict_with_embeddings(self, inputs: Any, batch_size: int = 256) -> tuple[list[Prediction],
                                                                                   np.ndarray | None]:
        """`predict`'s answers and each input's projected embedding ((N, DIM) float32, or None)."""
        checked = self.check_batch(inputs)
        probs = np.zeros((len(checked), len(self.labels)), dtype=np.float32)
        embeddings = np.zeros((len(checked), DIM), dtype=np.float32) if self.has_embeddings else None
        for rows, feeds in self.preprocessor.feeds(checked, batch_size):
            logits, embedding = self.logits_and_embedding(feeds)
            probs[rows] = torch.softmax(logits.float(), dim=1).cpu().numpy()
            if embeddings is not None and embedding is not None:
                embeddings[rows] = embedding.float().cpu().numpy()
        return self._predictions(probs, self.preprocessor.annotate(checked)), embeddings

    def predict_proba(self, inputs: Any, batch_size: int = 256) -> np.ndarray:
        """Inputs of the model's kind -> class probabilities (N, K), in the inputs' order."""
        return self._proba(self.check_batch(inputs), batch_size)

    @torch.inference_mode()
    def _proba(self, checked: Any, batch_size: int = 256) -> np.ndarray:
        probs = np.zeros((len(checked), len(self.labels)), dtype=np.float32)
        for rows, feeds in self.preprocessor.feeds(checked, batch_size):
            probs[rows] = torch.softmax(self.logits(feeds).float(), dim=1).cpu().numpy()
        return probs

    def predict(self, inputs: Any) -> list[Prediction]:
        checked = self.check_batch(inputs)
        return self._predictions(self._proba(checked), self.preprocessor.annotate(checked))

    def _predictions(self, probs: np.ndarray, notes: list[dict[str, Any]]) -> list[Prediction]:
        return [Prediction(self.labels[int(row.argmax())], int(row.argmax()),
                           {label: round(float(p), 6) for label, p in zip(self.labels, row)}, note)
                for row, note in zip(probs, notes)]
