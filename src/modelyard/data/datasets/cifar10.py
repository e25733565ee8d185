"""CIFAR-10: 60k 32x32 colour images, 10 balanced classes (Krizhevsky 2009).

Sources: torchvision's downloader (`torchvision.datasets.CIFAR10(download=True)`, the canonical one) when
the network allows, else a local `cifar-10-batches-py` directory (`paths.local_source_dir`), read in CIFAR's own
pickle format. No package registry ships CIFAR-10, so offline with neither the fetch fails naming both.
"""

from __future__ import annotations

import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np

from modelyard.data.datasets import DatasetSpec, SourceContext
from modelyard.data.datasets._sources import SourceError
from modelyard.modalities.image import ImageSchema, ImageSplit

BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
FOLDER = "cifar-10-batches-py"


def canonical(raw_dir: Path, ctx: SourceContext) -> str:
    import socket

    from torchvision.datasets import CIFAR10

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(ctx.timeout_s)
    try:
        with tempfile.TemporaryDirectory(prefix="modelyard-cifar-") as tmp:
            CIFAR10(root=tmp, train=True, download=True)  # downloads, checks the md5, extracts
            shutil.copytree(Path(tmp) / FOLDER, raw_dir / FOLDER)
    except (OSError, RuntimeError) as exc:
        raise SourceError(f"torchvision's CIFAR10 download failed: {exc}") from None
    finally:
        socket.setdefaulttimeout(previous)
    return "canonical:torchvision.datasets.CIFAR10"


def local(raw_dir: Path, ctx: SourceContext) -> str:
    """A `cifar-10-batches-py` directory (or one holding it), as the official tarball extracts."""
    if ctx.local_dir is None:
        raise SourceError(f"no local directory given (set paths.local_source_dir to a {FOLDER} directory)")
    folder = ctx.local_dir if (ctx.local_dir / "batches.meta").is_file() else ctx.local_dir / FOLDER
    names = ["batches.meta", *BATCHES["train"], *BATCHES["test"]]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise SourceError(f"{folder} is not a {FOLDER} directory: lacks {', '.join(missing)}")
    (raw_dir / FOLDER).mkdir()
    for name in names:
        shutil.copyfile(folder / name, raw_dir / FOLDER / name)
    return f"local:{folder}"


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as fh:
        return pickle.load(fh, encoding="latin1")  # noqa: S301 - CIFAR's own format is a pickle


def read_raw(raw_dir: Path) -> dict[str, ImageSplit]:
    """Rows of 3072 bytes (1024 R, 1024 G, 1024 B, each row-major) -> uint8 (N, 32, 32, 3)."""
    folder = raw_dir / FOLDER
    meta = _unpickle(folder / "batches.meta")
    if list(meta["label_names"]) != list(SPEC.classes):
        raise ValueError(f"{folder}/batches.meta names classes {meta['label_names']}, expected {list(SPEC.classes)}")
    splits = {}
    for split, names in BATCHES.items():
        images, labels = [], []
        for name in names:
            batch = _unpickle(folder / name)
            data = np.asarray(batch["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072:
                raise ValueError(f"{folder / name}: expected rows of 3072 bytes, got {data.shape}")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch["labels"], dtype=np.int64))
        splits[split] = ImageSplit(images=np.ascontiguousarray(np.concatenate(images)), labels=np.concatenate(labels))
    return splits


def write_batches(folder: Path, splits: dict, classes: list[str]) -> None:
    """Write splits in CIFAR's pickle layout (5 train batches + test_batch): the inverse of `read_raw`."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": list(classes), "num_vis": 3072}, fh)
    for split, names in BATCHES.items():
        images, labels = splits[split].images, splits[split].labels
        for i, name in enumerate(names):
            part = slice(i * len(images) // len(names), (i + 1) * len(images) // len(names))
            rows = images[part].transpose(0, 3, 1, 2).reshape(-1, 3072)
            with open(folder / name, "wb") as fh:
                pickle.dump({"batch_label": name, "labels": labels[part].tolist(), "data": rows}, fh)


SPEC = DatasetSpec(
    name="cifar10",
    modality="image",
    schema=ImageSchema(height=32, width=32, channels=3),
    classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    description="60k 32x32 colour images, 10 balanced classes",
    split_sizes={"train": 50000, "test": 10000},
    sources={"canonical": canonical, "local": local},
    read_raw=read_raw,
    raw_marker=f"{FOLDER}/test_batch",
    class_fraction=(0.05, 0.20),
    augment={"crop_padding": 4, "hflip_prob": 0.5, "erasing_prob": 0.0},
    license="MIT-like (see the CIFAR page)",
)
