"""The fitted preprocessing of an image model: how pixels become model inputs.

    any image file --decode--> uint8 at the training data's size and channels (what the dataset stores)
    uint8 batch --__call__--> float (B, C, H, W) at the model's input size, channels and normalisation

Training augments in between (crop and flip at the data's size, erasing after normalisation).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from modelyard.modalities import InvalidInputError, Preprocessor
from modelyard.modalities.image.augment import ImagePolicy, random_crop, random_erasing, random_hflip

MIN_IMAGE_SIDE = 8  # below this an upload holds too little to classify
MAX_IMAGE_PIXELS = 4096 * 4096  # refuse decompression bombs before decoding them


@dataclass(frozen=True)
class ImagePreprocessor(Preprocessor):
    source_shape: tuple[int, int, int]  # (H, W, C) of the training data: what `decode` produces
    input_shape: tuple[int, int, int]  # (H, W, C) the model takes
    mean: tuple[float, ...]  # per input channel
    std: tuple[float, ...]
    normalization: str = "fitted on the training split"

    kind: ClassVar[str] = "image"

    def __post_init__(self) -> None:
        c_in, c_model = self.source_shape[2], self.input_shape[2]
        if c_in not in (1, 3) or c_model not in (1, 3) or (c_in == 3 and c_model == 1):
            raise ValueError(f"cannot feed {c_in}-channel data to a {c_model}-channel model")
        if len(self.mean) != c_model or len(self.std) != c_model:
            raise ValueError(f"mean/std need {c_model} values, got {list(self.mean)} / {list(self.std)}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {list(self.std)}")

    # ---- tensors on the model's device ----------------------------------------------------------------

    def to_unit(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W) or (B, H, W, C) -> float (B, C, H, W) in [0, 1], at the data's size."""
        x = images_u8.float().div_(255.0)
        return x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] (B, C, H, W) at the data's size -> the model's size, channels and normalisation."""
        h, w, c = self.input_shape
        if tuple(x.shape[-2:]) != (h, w):
            shrink = x.shape[-2] > h or x.shape[-1] > w
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
        if x.shape[1] != c:
            x = x.expand(-1, c, -1, -1)
        mean, std = self._stats(x.device, x.dtype)
        return (x - mean) / std

    def _stats(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """mean/std as (1, C, 1, 1) tensors on `device`, made once: building them per batch would copy from
        the host every step (a synchronising copy on a GPU)."""
        cache = self.__dict__.setdefault("_stats_cache", {})
        key = (device, dtype)
        if key not in cache:
            cache[key] = (torch.tensor(self.mean, dtype=dtype).view(1, -1, 1, 1).to(device),
                          torch.tensor(self.std, dtype=dtype).view(1, -1, 1, 1).to(device))
        return cache[key]

    def __call__(self, images_u8: torch.Tensor) -> torch.Tensor:
        """What evaluation and serving feed the model."""
        return self.finish(self.to_unit(images_u8))

    def train_batch(self, images_u8: torch.Tensor, policy: ImagePolicy, gen: torch.Generator) -> torch.Tensor:
        """Augmented model input: crop (zero padding, black like the background) and flip at the data's size,
        erasing after normalisation so erased pixels sit at the mean, as torchvision's RandomErasing does."""
        x = random_crop(self.to_unit(images_u8), policy.crop_padding, gen)
        if policy.hflip_prob > 0:
            x = random_hflip(x, policy.hflip_prob, gen)
        x = self.finish(x)
        if policy.erasing_prob > 0:
            x = random_erasing(x, policy.erasing_prob, policy.erasing_scale, policy.erasing_ratio, gen)
        return x

    # ---- the Preprocessor interface -------------------------------------------------------------------

    def model_input(self) -> dict[str, Any]:
        h, w, c = self.input_shape
        return {"in_channels": c, "height": h, "width": w}

    def check_batch(self, images: Any) -> np.ndarray:
        """uint8 images shaped like the training data ((N, H, W) for gray, (N, H, W, 3) for colour)."""
        h, w, c = self.source_shape
        images = np.asarray(images)
        one = (h, w) if c == 1 else (h, w, c)
        if images.shape == one:
            images = images[None]
        if images.shape[1:] != one:
            raise InvalidInputError("bad_shape", f"expected images shaped (N, {', '.join(map(str, one))}), "
                                                 f"got {images.shape}")
        if images.dtype != np.uint8:
            raise InvalidInputError("bad_dtype", f"expected uint8 pixels, got {images.dtype}")
        return images

    def feeds(self, images: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        for start in range(0, len(images), batch_size):
            chunk = np.ascontiguousarray(images[start : start + batch_size])
            yield np.arange(start, start + len(chunk)), {"images": torch.from_numpy(chunk)}

    def graph(self, model: torch.nn.Module) -> torch.nn.Module:
        return ImageGraph(self, model)

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {"images": {0: "batch"}}

    # ---- what a user hands in -----------------------------------------------------------------------

    def decode(self, data: bytes) -> np.ndarray:
        """Bytes of a PNG/JPEG/... of any size, gray or colour -> uint8 shaped like one training image."""
        from PIL import Image, UnidentifiedImageError

        if not data:
            raise InvalidInputError("empty_file", "the uploaded file is empty")
        try:
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise InvalidInputError("image_too_large",
                                            f"image is {width}x{height}; at most {MAX_IMAGE_PIXELS} pixels")
                probe.verify()
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                return self._to_source_shape(img)
        except InvalidInputError:
            raise
        except Image.DecompressionBombError as exc:  # Pillow refuses sizes far past its own limit at open()
            raise InvalidInputError("image_too_large", f"{exc}; at most {MAX_IMAGE_PIXELS} pixels") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise InvalidInputError("not_an_image", f"the file is not a readable image ({type(exc).__name__})") from None

    def _to_source_shape(self, img: Any) -> np.ndarray:
        from PIL import Image

        if min(img.size) < MIN_IMAGE_SIDE:
            raise InvalidInputError("image_too_small", f"image is {img.width}x{img.height}; each side must be "
                                                       f"at least {MIN_IMAGE_SIDE} px")
        h, w, c = self.source_shape
        converted = img.convert("L" if c == 1 else "RGB")
        if converted.size != (w, h):
            converted = converted.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=None)
        return np.array(converted, dtype=np.uint8)  # a writable copy (PIL's buffer is read-only)

    # ---- model.json ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped (lists, not tuples), so a preprocessor compares equal to itself read back."""
        return {"kind": self.kind, **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ImagePreprocessor:
        if doc.get("kind", "image") != cls.kind:
            raise ValueError(f"not an image preprocessor: kind {doc.get('kind')!r}")
        return cls(source_shape=tuple(doc["source_shape"]), input_shape=tuple(doc["input_shape"]),
                   mean=tuple(doc["mean"]), std=tuple(doc["std"]), normalization=doc.get("normalization", ""))


class ImageGraph(torch.nn.Module):
    """uint8 images (N, H, W[, C]) -> logits, the preprocessing included (what serving and ONNX run)."""

    def __init__(self, preprocessor: ImagePreprocessor, model: torch.nn.Module) -> None:
        super().__init__()
        self.preprocessor, self.model = preprocessor, model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocessor(images))


class ImageBatches:
    """Batches of resident (or streamed) uint8 images, augmented and preprocessed on the training device."""

    def __init__(self, preprocessor: ImagePreprocessor, policy: ImagePolicy) -> None:
        self.preprocessor, self.policy = preprocessor, policy

    def train_batch(self, rows: Mapping[str, torch.Tensor], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.preprocessor.train_batch(rows["images"], self.policy, gen), rows["labels"]

    def eval_batch(self, rows: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.preprocessor(rows["images"]), rows["labels"]
