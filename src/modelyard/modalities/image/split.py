"""Image splits: uint8 arrays, (N, H, W) gray or (N, H, W, C) colour, stored in one compressed npz per split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class SplitFileError(RuntimeError):
    """A split file that is not in the image format."""


@dataclass(frozen=True)
class ImageSchema:
    """What a dataset's images look like: stored shape (height, width, channels); 1 channel is (N, H, W)."""

    height: int
    width: int
    channels: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.height, self.width, self.channels


@dataclass(frozen=True)
class ImageSplit:
    images: np.ndarray  # (N, H, W) gray or (N, H, W, C)
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, rows: Any) -> ImageSplit:
        return ImageSplit(images=self.images[rows], labels=self.labels[rows])

    @property
    def inputs(self) -> np.ndarray:
        return self.images


def write_npz(path: Path, split: ImageSplit) -> dict[str, Any]:
    np.savez_compressed(path, images=split.images, labels=split.labels)
    return {"image_shape": list(split.images.shape[1:])}


def read_npz(path: Path) -> ImageSplit:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return ImageSplit(images=npz["images"], labels=npz["labels"])
    except (KeyError, ValueError, OSError) as exc:
        raise SplitFileError(f"{path} is not an image split (want arrays 'images' and 'labels'): {exc}") from exc


def image_shape(images: np.ndarray) -> tuple[int, int, int]:
    """(H, W, C) of a stored image batch: (N, H, W) is gray, (N, H, W, C) has C channels."""
    if images.ndim == 3:
        return int(images.shape[1]), int(images.shape[2]), 1
    if images.ndim == 4:
        return int(images.shape[1]), int(images.shape[2]), int(images.shape[3])
    raise ValueError(f"expected images shaped (N, H, W) or (N, H, W, C), got {images.shape}")
