"""The on-disk format of an image dataset, shared by every stage.

    <data_dir>/<dataset>/
        dataset.json   name, class names, image shape, source, and per split: count + sha256 of its arrays
        train.npz      images: uint8 (N, H, W) gray or (N, H, W, C) colour   labels: int64 (N,)
        test.npz       same layout

Loading does not check the contents: that is the validate stage's job, so a broken copy loads and is
reported on instead of crashing the loader.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "modelyard-image-npz/1"
SPLITS = ("train", "test")


class DatasetError(RuntimeError):
    """A dataset directory is missing or not in the expected format."""


@dataclass(frozen=True)
class ImageSplit:
    images: np.ndarray  # (N, H, W) gray or (N, H, W, C)
    labels: np.ndarray  # (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def array_sha256(*arrays: np.ndarray) -> str:
    """Content hash of arrays (dtype, shape and bytes), independent of how they were compressed on disk."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.dtype).encode())
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def read_metadata(dataset_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(dataset_dir) / "dataset.json"
    if not path.is_file():
        raise DatasetError(f"no dataset at {dataset_dir}: {path.name} is missing (run `modelyard fetch` first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc}") from exc


def load_split(dataset_dir: str | os.PathLike[str], split: str) -> ImageSplit:
    """Load one split as numpy arrays, as they are on disk."""
    path = Path(dataset_dir) / f"{split}.npz"
    if not path.is_file():
        raise DatasetError(f"split '{split}' missing: {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return ImageSplit(images=npz["images"], labels=npz["labels"])
    except (KeyError, ValueError, OSError) as exc:
        raise DatasetError(f"{path} is not a dataset split (want arrays 'images' and 'labels'): {exc}") from exc


def write_dataset(
    dataset_dir: str | os.PathLike[str],
    splits: dict[str, ImageSplit],
    classes: list[str],
    source: str,
    name: str,
) -> Path:
    """Write a dataset atomically: a reader sees the old complete copy or the new complete copy."""
    dataset_dir = Path(dataset_dir)
    dataset_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dataset_dir.name}-", dir=dataset_dir.parent))
    staging.chmod(0o755)
    try:
        meta: dict[str, Any] = {"format": FORMAT, "name": name, "classes": classes, "source": source, "splits": {}}
        for split, data in splits.items():
            np.savez_compressed(staging / f"{split}.npz", images=data.images, labels=data.labels)
            meta["splits"][split] = {
                "count": len(data),
                "image_shape": list(data.images.shape[1:]),
                "sha256": array_sha256(data.images, data.labels),
            }
        (staging / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        replace_dir(staging, dataset_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dataset_dir


def replace_dir(new: Path, target: Path) -> None:
    """Swap a fully written directory into place, keeping the old one until the new one is there."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)
