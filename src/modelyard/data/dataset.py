"""The on-disk format of a dataset, shared by every stage.

    <data_dir>/<dataset>/
        dataset.json   name, modality, class names, source, and per split: count + sha256 of its contents
        train.npz      images: images: uint8 (N, H, W) gray or (N, H, W, C) colour   labels: int64 (N,)
        test.npz       same layout
    or, for text:
        train.jsonl    one {"text": str, "label": int} per line, UTF-8
        test.jsonl     same layout

Loading does not check the contents: that is the validate stage's job, so a broken copy loads and is
reported on instead of crashing the loader.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "modelyard-image-npz/1"
TEXT_FORMAT = "modelyard-text-jsonl/1"
SPLITS = ("train", "test")


class DatasetError(RuntimeError):
    """A dataset directory is missing or not in the expected format."""


@dataclass(frozen=True)
class ImageSplit:
    images: np.ndarray  # (N, H, W) gray or (N, H, W, C)
    labels: np.ndarray  # (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, rows: Any) -> ImageSplit:
        return ImageSplit(images=self.images[rows], labels=self.labels[rows])


@dataclass(frozen=True)
class TextSplit:
    texts: list[str]
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, rows: Any) -> TextSplit:
        if isinstance(rows, slice):
            return TextSplit(texts=self.texts[rows], labels=self.labels[rows])
        rows = np.asarray(rows)
        return TextSplit(texts=[self.texts[i] for i in rows], labels=self.labels[rows])


Split = ImageSplit | TextSplit


def text_sha256(texts: list[str], labels: np.ndarray) -> str:
    """Content hash of texts and labels (each text length-prefixed, so no two lists hash alike). A value that
    is not a string (a broken export's number or null) is hashed as its JSON behind a 0xff byte, which no
    UTF-8 holds, so the split can still be written, validated and refused."""
    digest = hashlib.sha256()
    for text in texts:
        data = (text.encode("utf-8", errors="surrogatepass") if isinstance(text, str)
                else b"\xff" + json.dumps(text).encode())
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    digest.update(array_sha256(np.asarray(labels, dtype=np.int64)).encode())
    return digest.hexdigest()


def split_sha256(split: Split) -> str:
    if isinstance(split, TextSplit):
        return text_sha256(split.texts, split.labels)
    return array_sha256(split.images, split.labels)


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


def load_split(dataset_dir: str | os.PathLike[str], split: str) -> Split:
    """Load one split as it is on disk: an ImageSplit (npz) or a TextSplit (jsonl)."""
    text_path = Path(dataset_dir) / f"{split}.jsonl"
    if text_path.is_file():
        return _load_text(text_path)
    path = Path(dataset_dir) / f"{split}.npz"
    if not path.is_file():
        raise DatasetError(f"split '{split}' missing: {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return ImageSplit(images=npz["images"], labels=npz["labels"])
    except (KeyError, ValueError, OSError) as exc:
        raise DatasetError(f"{path} is not a dataset split (want arrays 'images' and 'labels'): {exc}") from exc


def _load_text(path: Path) -> TextSplit:
    """Rows as they are: a text that is not a string, or a label that is not an integer, is kept as found
    (for validation to report); only a line that is not a JSON object stops the loader, naming the line."""
    texts, labels = [], []
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                row = json.loads(raw)
            except ValueError as exc:  # includes invalid UTF-8
                raise DatasetError(f"{path}:{number} is not a JSON line: {exc}") from exc
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{number}: expected an object with 'text' and 'label'")
            texts.append(row.get("text"))
            labels.append(row.get("label", -1))
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        label_array = np.array([v if isinstance(v, int) else -1 for v in labels], dtype=np.int64)
    return TextSplit(texts=texts, labels=label_array)


def _write_text(path: Path, split: TextSplit) -> None:
    if len(split.texts) != len(split.labels):  # one JSON line holds a text and its label: no way to keep this
        raise DatasetError(f"cannot write {path.name}: {len(split.texts)} texts but {len(split.labels)} labels")
    with path.open("w", encoding="utf-8", errors="surrogatepass") as fh:
        for text, label in zip(split.texts, split.labels.tolist()):
            fh.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")


def write_dataset(
    dataset_dir: str | os.PathLike[str],
    splits: dict[str, Split],
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
        text = any(isinstance(data, TextSplit) for data in splits.values())
        meta: dict[str, Any] = {"format": TEXT_FORMAT if text else FORMAT, "name": name,
                                "modality": "text" if text else "image", "classes": classes, "source": source,
                                "splits": {}}
        for split, data in splits.items():
            entry: dict[str, Any] = {"count": len(data), "sha256": split_sha256(data)}
            if isinstance(data, TextSplit):
                _write_text(staging / f"{split}.jsonl", data)
            else:
                np.savez_compressed(staging / f"{split}.npz", images=data.images, labels=data.labels)
                entry["image_shape"] = list(data.images.shape[1:])
            meta["splits"][split] = entry
        (staging / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        replace_dir(staging, dataset_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dataset_dir


def replace_dir(new: Path, target: Path) -> None:
    """Swap a fully written directory into place, keeping the old one until the new one is there."""
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")  # unique: swaps may overlap
    if target.exists() or target.is_symlink():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)
