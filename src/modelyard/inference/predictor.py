"""Load a saved model and predict; the rules for what counts as a usable image live here, not in HTTP code."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modelyard.data.augment import normalize
from modelyard.models.artifact import ModelSpec, load_model_dir

MIN_IMAGE_SIDE = 8  # below this an upload holds too little to classify; 28x28 is the native size
MAX_IMAGE_PIXELS = 4096 * 4096  # refuse decompression bombs before decoding them


class InvalidInputError(ValueError):
    """The input cannot be classified; `code` is a stable machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    scores: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        return {"label": self.label, "index": self.index, "scores": self.scores}


def decode_image(data: bytes, spec: ModelSpec) -> np.ndarray:
    """Bytes of a PNG/JPEG/... -> uint8 (H, W) grayscale at the model's input size, or InvalidInputError."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidInputError("empty_file", "the uploaded file is empty")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if width * height > MAX_IMAGE_PIXELS:
                raise InvalidInputError("image_too_large", f"image is {width}x{height}; at most {MAX_IMAGE_PIXELS} pixels")
            probe.verify()
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if min(img.size) < MIN_IMAGE_SIDE:
                raise InvalidInputError(
                    "image_too_small", f"image is {img.width}x{img.height}; each side must be at least {MIN_IMAGE_SIDE} px"
                )
            gray = img.convert("L")
            size = (spec.input["width"], spec.input["height"])
            if gray.size != size:
                gray = gray.resize(size, Image.Resampling.BILINEAR)
            return np.array(gray, dtype=np.uint8)  # a writable copy (PIL's buffer is read-only)
    except InvalidInputError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow refuses sizes far past its own limit at open()
        raise InvalidInputError("image_too_large", f"{exc}; at most {MAX_IMAGE_PIXELS} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidInputError("not_an_image", f"the file is not a readable image ({type(exc).__name__})") from None


class Predictor:
    """A model ready to predict batches of uint8 images shaped like its training data."""

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, device: str | torch.device = "cpu") -> None:
        self.model = model.eval()
        self.spec = spec
        self.device = torch.device(device)

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike[str], device: str | torch.device = "cpu") -> Predictor:
        model, spec = load_model_dir(Path(model_dir), device)
        return cls(model, spec, device)

    @property
    def labels(self) -> list[str]:
        return self.spec.labels

    def check_batch(self, images: np.ndarray) -> np.ndarray:
        h, w = self.spec.input["height"], self.spec.input["width"]
        images = np.asarray(images)
        if images.ndim == 2:
            images = images[None]
        if images.ndim != 3 or images.shape[1:] != (h, w):
            raise InvalidInputError("bad_shape", f"expected images shaped (N, {h}, {w}), got {images.shape}")
        if images.dtype != np.uint8:
            raise InvalidInputError("bad_dtype", f"expected uint8 pixels, got {images.dtype}")
        return images

    @torch.inference_mode()
    def predict_proba(self, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """uint8 (N, H, W) -> class probabilities (N, K)."""
        images = self.check_batch(images)
        norm = self.spec.normalization
        out = []
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(self.device)
            logits = self.model(normalize(x, norm["mean"], norm["std"]))
            out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), dtype=np.float32)

    def predict(self, images: np.ndarray) -> list[Prediction]:
        probs = self.predict_proba(images)
        result = []
        for row in probs:
            idx = int(row.argmax())
            result.append(Prediction(self.labels[idx], idx, {label: round(float(p), 6) for label, p in zip(self.labels, row)}))
        return result
