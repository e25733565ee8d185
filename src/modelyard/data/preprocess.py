"""The fitted preprocessing of an image model: the one definition of how pixels become model inputs.

Fitted at training time (normalisation statistics per channel, or the backbone's own) and saved in the
model's `model.json`, it is used as is by training's evaluation, the evaluate stage, the MLflow pyfunc and
serving, so all of them feed the model the same way:

    any image file --decode--> uint8 at the training data's size and channels (what the dataset stores)
    uint8 batch --__call__--> float (B, C, H, W) at the model's input size, channels and normalisation

Training augments in between (crop and flip at the data's size, erasing after normalisation).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from modelyard.data.augment import AugmentPolicy, random_crop, random_erasing, random_hflip
from modelyard.data.errors import InvalidInputError

__all__ = ["InvalidInputError", "ImagePreprocessor", "image_shape"]

MIN_IMAGE_SIDE = 8  # below this an upload holds too little to classify
MAX_IMAGE_PIXELS = 4096 * 4096  # refuse decompression bombs before decoding them


@dataclass(frozen=True)
class ImagePreprocessor:
    source_shape: tuple[int, int, int]  # (H, W, C) of the training data: what `decode` produces
    input_shape: tuple[int, int, int]  # (H, W, C) the model takes
    mean: tuple[float, ...]  # per input channel
    std: tuple[float, ...]
    normalization: str = "fitted on the training split"
    kind: str = "image"

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

    def train_batch(self, images_u8: torch.Tensor, policy: AugmentPolicy, gen: torch.Generator) -> torch.Tensor:
        """Augmented model input: crop (zero padding, black like the background) and flip at the data's size,
        erasing after normalisation so erased pixels sit at the mean, as torchvision's RandomErasing does."""
        x = self.to_unit(images_u8)
        x = random_crop(x, policy.crop_padding, gen)
        if policy.hflip_prob > 0:
            x = random_hflip(x, policy.hflip_prob, gen)
        x = self.finish(x)
        if policy.erasing_prob > 0:
            x = random_erasing(x, policy.erasing_prob, policy.erasing_scale, policy.erasing_ratio, gen)
        return x

    # ---- what a user hands in -----------------------------------------------------------------------

    def check_batch(self, images: np.ndarray) -> np.ndarray:
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
                if min(img.size) < MIN_IMAGE_SIDE:
                    raise InvalidInputError("image_too_small", f"image is {img.width}x{img.height}; each side "
                                                               f"must be at least {MIN_IMAGE_SIDE} px")
                h, w, c = self.source_shape
                converted = img.convert("L" if c == 1 else "RGB")
                if converted.size != (w, h):
                    converted = converted.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=None)
                return np.array(converted, dtype=np.uint8)  # a writable copy (PIL's buffer is read-only)
        except InvalidInputError:
            raise
        except Image.DecompressionBombError as exc:  # Pillow refuses sizes far past its own limit at open()
            raise InvalidInputError("image_too_large", f"{exc}; at most {MAX_IMAGE_PIXELS} pixels") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise InvalidInputError("not_an_image", f"the file is not a readable image ({type(exc).__name__})") from None

    # ---- model.json ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped (lists, not tuples), so a spec compares equal to itself read back from model.json."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ImagePreprocessor:
        if doc.get("kind", "image") != "image":
            raise ValueError(f"not an image preprocessor: kind {doc.get('kind')!r}")
        return cls(source_shape=tuple(doc["source_shape"]), input_shape=tuple(doc["input_shape"]),
                   mean=tuple(doc["mean"]), std=tuple(doc["std"]),
                   normalization=doc.get("normalization", ""), kind="image")


def image_shape(images: np.ndarray) -> tuple[int, int, int]:
    """(H, W, C) of a stored image batch: (N, H, W) is gray, (N, H, W, C) has C channels."""
    if images.ndim == 3:
        return int(images.shape[1]), int(images.shape[2]), 1
    if images.ndim == 4:
        return int(images.shape[1]), int(images.shape[2]), int(images.shape[3])
    raise ValueError(f"expected images shaped (N, H, W) or (N, H, W, C), got {images.shape}")
