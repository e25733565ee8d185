"""Images: uint8 pixels, gray or colour; fitted per-channel normalisation; crop, flip and erasing."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelyard.modalities import Limits, Modality, array_sha256
from modelyard.modalities.image.augment import ImagePolicy, fit_normalization
from modelyard.modalities.image.codec import ImageCodec
from modelyard.modalities.image.preprocess import ImageBatches, ImagePreprocessor
from modelyard.modalities.image.split import ImageSchema, ImageSplit, read_npz, write_npz
from modelyard.modalities.image.validation import duplicate_keys, expectations, row_table

__all__ = ["MODALITY", "ImageModality", "ImagePolicy", "ImagePreprocessor", "ImageSchema", "ImageSplit"]


class ImageModality(Modality):
    name: ClassVar[str] = "image"
    noun: ClassVar[str] = "images"
    runtime_packages: ClassVar[tuple[str, ...]] = ("pillow",)
    file_suffix: ClassVar[str] = ".npz"

    def write_split(self, path: Path, split: ImageSplit) -> dict[str, Any]:
        return write_npz(path, split)

    def read_split(self, path: Path) -> ImageSplit:
        return read_npz(path)

    def make_split(self, inputs: list[Any], labels: Any) -> ImageSplit:
        return ImageSplit(images=np.stack([np.asarray(x, dtype=np.uint8) for x in inputs]),
                          labels=np.asarray(labels, dtype=np.int64))

    def split_sha256(self, split: ImageSplit) -> str:
        return array_sha256(split.images, split.labels)

    def row_table(self, name: str, split: ImageSplit):
        return row_table(name, split)

    def expectations(self, schema: ImageSchema, num_classes: int) -> dict[str, list[Any]]:
        return expectations(schema, num_classes)

    def duplicate_keys(self, split: ImageSplit) -> dict[str, list[Any]]:
        return duplicate_keys(split)

    def fit_statistics(self, split: ImageSplit) -> dict[str, Any]:
        mean, std = fit_normalization(split.images)
        return {"mean": mean, "std": std}

    def policy(self, defaults: Mapping[str, Any], changes: Mapping[str, Any]) -> ImagePolicy:
        return ImagePolicy.from_dict({**defaults, **changes})

    def policy_from_dict(self, doc: Mapping[str, Any]) -> ImagePolicy:
        return ImagePolicy.from_dict(doc)

    def fit_preprocessor(self, request: Mapping[str, Any], statistics: Mapping[str, Any],
                         schema: ImageSchema) -> ImagePreprocessor:
        """The model's input is the data's size and channels unless the family asks for `image_size` and
        `channels`; normalisation is the family's `normalization` (mean, std, why) or the fitted statistics
        (repeated across channels when gray data feed a colour model)."""
        size, channels = request.get("image_size"), request.get("channels")
        input_shape = (size or schema.height, size or schema.width, channels or schema.channels)
        fixed = request.get("normalization")
        if fixed is None:
            repeat = input_shape[2] // schema.channels
            fixed = (list(statistics["mean"]) * repeat, list(statistics["std"]) * repeat,
                     "fitted on the training split")
        return ImagePreprocessor(schema.shape, input_shape, tuple(fixed[0]), tuple(fixed[1]), fixed[2])

    def preprocessor_from_dict(self, doc: Mapping[str, Any]) -> ImagePreprocessor:
        return ImagePreprocessor.from_dict(doc)

    def training_arrays(self, split: ImageSplit, preprocessor: ImagePreprocessor) -> dict[str, np.ndarray]:
        return {"images": split.images, "labels": split.labels}

    def batch_adapter(self, preprocessor: ImagePreprocessor, policy: ImagePolicy) -> ImageBatches:
        return ImageBatches(preprocessor, policy)

    def input_example(self, split: ImageSplit, count: int) -> np.ndarray:
        return np.ascontiguousarray(split.images[:count])

    def from_pyfunc(self, model_input: Any) -> np.ndarray:
        return np.asarray(model_input, dtype=np.uint8)

    def codec(self, preprocessor: ImagePreprocessor, limits: Limits) -> ImageCodec:
        return ImageCodec(preprocessor, limits)

    def write_samples(self, split: ImageSplit, classes: list[str], out_dir: Path) -> list[Path]:
        """The first test image of each class as `<class>.png` (try it: curl -F file=@<png> .../predict)."""
        from PIL import Image

        from modelyard.modalities._samples import write_first_of_each_class

        def write(path: Path, row: int) -> None:
            Image.fromarray(split.images[row]).save(path)  # gray (H, W) or RGB (H, W, 3)

        return write_first_of_each_class(split.labels, classes, out_dir, ".png", write)

    def request_example(self, sample: Path, url: str) -> str:
        return f"curl -F file=@{sample} {url}"


MODALITY = ImageModality()
