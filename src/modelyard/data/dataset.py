"""The on-disk format of a dataset, shared by every stage; the modality decides how a split is stored.

    <data_dir>/<dataset>/
        dataset.json      name, modality, class names, source, and per split: count + sha256 of its contents
        train<suffix>     the modality's file: images .npz, texts .jsonl, series .npz
        test<suffix>

Loading does not check the contents: that is the validate stage's job, so a broken copy loads and is
reported on instead of crashing the loader.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.modalities import Modality, Split, get_modality

FORMAT = "modelyard-dataset/2"
SPLITS = ("train", "test")


class DatasetError(RuntimeError):
    """A dataset directory is missing or not in the expected format."""


def read_metadata(dataset_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(dataset_dir) / "dataset.json"
    if not path.is_file():
        raise DatasetError(f"no dataset at {dataset_dir}: {path.name} is missing (run `modelyard fetch` first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc}") from exc


def contents_sha256(meta: dict[str, Any]) -> str:
    """One hash of a dataset's contents: of its splits' counts and hashes in dataset.json."""
    import hashlib

    return hashlib.sha256(json.dumps(meta["splits"], sort_keys=True).encode()).hexdigest()


def modality_of(meta: dict[str, Any]) -> Modality:
    """The modality a dataset's metadata names."""
    if "modality" not in meta:
        raise ValueError(f"dataset {meta.get('name', '?')!r} names no modality in its dataset.json (written by an "
                         "older modelyard): fetch it again")
    return get_modality(meta["modality"])


def stratified_cut(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(rest, cut): `fraction` of each class's rows, drawn by `rng`, and the others; class by class, unsorted."""
    rest, cut = [], []
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        rng.shuffle(rows)
        n_cut = int(round(len(rows) * fraction))
        cut.append(rows[:n_cut])
        rest.append(rows[n_cut:])
    return np.concatenate(rest), np.concatenate(cut)


def load_split(dataset_dir: str | os.PathLike[str], split: str) -> Split:
    """Load one split as it is on disk, in its modality's split type."""
    modality = modality_of(read_metadata(dataset_dir))
    path = Path(dataset_dir) / f"{split}{modality.file_suffix}"
    if not path.is_file():
        raise DatasetError(f"split '{split}' missing: {path} does not exist")
    try:
        return modality.read_split(path)
    except (OSError, RuntimeError, ValueError) as exc:  # the modality's own error says what is wrong with the file
        raise DatasetError(str(exc)) from exc


def split_sha256(dataset_dir: str | os.PathLike[str], split: Split) -> str:
    return modality_of(read_metadata(dataset_dir)).split_sha256(split)


def write_dataset(dataset_dir: str | os.PathLike[str], splits: dict[str, Split], classes: list[str], *,
                  source: str, name: str, modality: str, extra: dict[str, Any] | None = None) -> Path:
    """Write a dataset atomically: a reader sees the old complete copy or the new complete copy. `extra`:
    more for dataset.json (what feedback joined the training split)."""
    dataset_dir = Path(dataset_dir)
    kind = get_modality(modality)
    dataset_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dataset_dir.name}-", dir=dataset_dir.parent))
    staging.chmod(0o755)
    try:
        meta: dict[str, Any] = {"format": FORMAT, "name": name, "modality": modality, "classes": list(classes),
                                "source": source, "splits": {}, **(extra or {})}
        for split, data in splits.items():
            extra = kind.write_split(staging / f"{split}{kind.file_suffix}", data)
            meta["splits"][split] = {"count": len(data), "sha256": kind.split_sha256(data), **extra}
        (staging / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        replace_dir(staging, dataset_dir)
    except RuntimeError as exc:  # a split the modality cannot write (e.g. texts and labels that differ in number)
        raise DatasetError(str(exc)) from exc
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
