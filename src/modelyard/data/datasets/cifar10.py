"""CIFAR-10: 60k 32x32 colour images, 10 balanced classes (Krizhevsky 2009).

Sources: torchvision's downloader (`torchvision.datasets.CIFAR10(download=True)`, the canonical one) when
the network allows, else a local `cifar-10-batches-py` directory (`paths.local_source_dir`), read in CIFAR's own
pickle format. No package registry ships CIFAR-10, so offline with neither the fetch fails naming both.

A pickle can run any code when loaded, so the batches are read with an unpickler that knows only what a
batch holds (numpy's array and dtype rebuilders), after two checks: each file is below its size bound, and
its SHA-256 is the one recorded in `SHA256SUMS` when the fetch copied it in (a full-size batch that is not
CIFAR's published file, by its MD5, is named in a warning). A file put beside the raw data later, or changed since, is refused before it is opened.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.data.datasets import DatasetSpec, SourceContext
from modelyard.data.datasets._sources import SourceError
from modelyard.modalities.image import ImageSchema, ImageSplit

log = logging.getLogger(__name__)

BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
FOLDER = "cifar-10-batches-py"
FILES = ("batches.meta", *BATCHES["train"], *BATCHES["test"])
SUMS = "SHA256SUMS"  # written by the fetch: what it copied in
# The published MD5 of each file of the official python tarball (torchvision checks the same ones). A batch
# as large as a full one (10,000 rows of 3,072 bytes) that is not the official file is named in a warning.
OFFICIAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
}
FULL_BATCH_BYTES = 10_000 * 3072
MAX_BYTES = {"batches.meta": 4096} | {name: 32 * 2**20 for name in FILES[1:]}  # 10,000 rows of 3,072 bytes fit


class UnsafeBatchError(ValueError):
    """A CIFAR file is too large, differs from what the fetch recorded, or asks the unpickler for code."""


def canonical(raw_dir: Path, ctx: SourceContext) -> str:
    import socket

    from torchvision.datasets import CIFAR10

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(ctx.timeout_s)
    try:
        with tempfile.TemporaryDirectory(prefix="modelyard-cifar-") as tmp:
            CIFAR10(root=tmp, train=True, download=True)  # downloads, checks the md5, extracts
            _copy_checked(Path(tmp) / FOLDER, raw_dir / FOLDER)
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
    missing = [n for n in FILES if not (folder / n).is_file()]
    if missing:
        raise SourceError(f"{folder} is not a {FOLDER} directory: lacks {', '.join(missing)}")
    try:
        _copy_checked(folder, raw_dir / FOLDER)
    except UnsafeBatchError as exc:
        raise SourceError(str(exc)) from None
    return f"local:{folder}"


def _copy_checked(src: Path, dst: Path) -> None:
    """Copy CIFAR's files from `src` within their size bounds (warning when a full-size batch is not CIFAR's
    published file), and record each copy's SHA-256 in `dst/SHA256SUMS` for `read_raw` to check."""
    dst.mkdir(parents=True)
    sums = []
    for name in FILES:
        data = _bounded_read(src / name)
        md5 = OFFICIAL_MD5.get(name)
        if md5 and len(data) >= FULL_BATCH_BYTES and hashlib.md5(data, usedforsecurity=False).hexdigest() != md5:
            log.warning("%s is a full-size batch but not CIFAR's published file (MD5 %s): a re-encoded, altered or "
                        "damaged copy; it is read as a batch like any other", src / name, md5)
        (dst / name).write_bytes(data)
        sums.append(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    (dst / SUMS).write_text("".join(sums))


def _bounded_read(path: Path) -> bytes:
    size = path.stat().st_size
    if size > MAX_BYTES[path.name]:
        raise UnsafeBatchError(f"{path} is {size} bytes; a CIFAR {path.name} is at most {MAX_BYTES[path.name]}")
    return path.read_bytes()


class _BatchUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, strings, bytes and numpy arrays; any other global is refused, so loading a
    crafted file cannot call into os, subprocess or anything else."""

    def find_class(self, module: str, name: str) -> Any:
        import _codecs

        from numpy._core import multiarray, numeric

        allowed = {
            ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
            ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy.core.numeric", "_frombuffer"): numeric._frombuffer,
            ("numpy._core.numeric", "_frombuffer"): numeric._frombuffer,
            ("_codecs", "encode"): _codecs.encode,  # bytes, as Python 3 writes them at protocol 2
        }
        if (module, name) not in allowed:
            raise UnsafeBatchError(f"a CIFAR batch holds only arrays, lists and strings; this file asks for "
                                   f"{module}.{name}")
        return allowed[module, name]


def _unpickle(path: Path, sums: dict[str, str]) -> dict:
    data = _bounded_read(path)
    if sums.get(path.name) != hashlib.sha256(data).hexdigest():
        raise UnsafeBatchError(f"{path} is not the file the fetch recorded in {path.parent / SUMS}; refetch the dataset")
    try:
        doc = _BatchUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafeBatchError:
        raise
    except Exception as exc:
        raise UnsafeBatchError(f"{path} is not a CIFAR batch: {exc}") from None
    if not isinstance(doc, dict):
        raise UnsafeBatchError(f"{path} holds a {type(doc).__name__}, not a CIFAR batch's dict")
    return doc


def _recorded_sums(folder: Path) -> dict[str, str]:
    try:
        lines = (folder / SUMS).read_text().splitlines()
    except OSError:
        raise UnsafeBatchError(f"{folder} has no {SUMS} (written by the fetch); refetch the dataset") from None
    return {name: digest for digest, _, name in (line.partition("  ") for line in lines if line.strip())}


def read_raw(raw_dir: Path) -> dict[str, ImageSplit]:
    """Rows of 3072 bytes (1024 R, 1024 G, 1024 B, each row-major) -> uint8 (N, 32, 32, 3)."""
    folder = raw_dir / FOLDER
    sums = _recorded_sums(folder)
    meta = _unpickle(folder / "batches.meta", sums)
    if list(meta["label_names"]) != list(SPEC.classes):
        raise ValueError(f"{folder}/batches.meta names classes {meta['label_names']}, expected {list(SPEC.classes)}")
    splits = {}
    for split, names in BATCHES.items():
        images, labels = [], []
        for name in names:
            batch = _unpickle(folder / name, sums)
            data = np.asarray(batch["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072:
                raise ValueError(f"{folder / name}: expected rows of 3072 bytes, got {data.shape}")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch["labels"], dtype=np.int64))
        splits[split] = ImageSplit(images=np.ascontiguousarray(np.concatenate(images)), labels=np.concatenate(labels))
    return splits


def write_batches(folder: Path, splits: dict, classes: list[str]) -> None:
    """Write splits in CIFAR's pickle layout (5 train batches + test_batch) with their `SHA256SUMS`: the
    inverse of `read_raw`."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = {"batches.meta": {"label_names": list(classes), "num_vis": 3072}}
    for split, names in BATCHES.items():
        images, labels = splits[split].images, splits[split].labels
        for i, name in enumerate(names):
            part = slice(i * len(images) // len(names), (i + 1) * len(images) // len(names))
            rows = images[part].transpose(0, 3, 1, 2).reshape(-1, 3072)
            docs[name] = {"batch_label": name, "labels": labels[part].tolist(), "data": rows}
    sums = []
    for name, doc in docs.items():
        data = pickle.dumps(doc)
        (folder / name).write_bytes(data)
        sums.append(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    (folder / SUMS).write_text("".join(sums))


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
