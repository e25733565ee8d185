"""Fetch a dataset from the first source that answers, into the on-disk format of `dataset.py`.

Fashion-MNIST comes from its canonical download (the mirror torchvision uses) when the network allows,
else from Debian's `dataset-fashion-mnist` package, which ships the same four idx files. Raw files are
kept under `<data_dir>/raw/<dataset>/` so a second fetch downloads nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelyard.config import DataConfig
from modelyard.data.dataset import ImageSplit, read_metadata, write_dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IdxFile:
    name: str
    md5: str  # of the canonical .gz, as torchvision lists it
    count: int


@dataclass(frozen=True)
class IdxDatasetSpec:
    name: str
    classes: tuple[str, ...]
    mirrors: tuple[str, ...]
    files: dict[str, tuple[IdxFile, IdxFile]]  # split -> (images, labels)
    debian_package: str
    debian_path: str
    image_shape: tuple[int, int] = (28, 28)


FASHION_MNIST = IdxDatasetSpec(
    name="fashion_mnist",
    classes=(
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    files={
        "train": (
            IdxFile("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 60000),
            IdxFile("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", 60000),
        ),
        "test": (
            IdxFile("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", 10000),
            IdxFile("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", 10000),
        ),
    },
    debian_package="dataset-fashion-mnist",
    debian_path="usr/share/datasets/fashion-mnist",
)
SPECS = {FASHION_MNIST.name: FASHION_MNIST}


class FetchError(RuntimeError):
    """No source could provide the dataset."""


def fetch_dataset(cfg: DataConfig, *, timeout_s: float = 15.0) -> Path:
    """Make `cfg.dataset_dir` hold the dataset (with cfg's limits); reuse what is already there."""
    spec = SPECS[cfg.dataset]
    dataset_dir = cfg.dataset_dir
    source = f"{spec.name} (train_limit={cfg.train_limit}, test_limit={cfg.test_limit})"
    if _is_current(dataset_dir, cfg):
        log.info("dataset %s already at %s; nothing to fetch", source, dataset_dir)
        return dataset_dir

    raw_dir = Path(cfg.data_dir) / "raw" / spec.name
    origin = _ensure_raw_files(spec, raw_dir, cfg.sources, timeout_s)
    splits = {}
    for split, (images_file, labels_file) in spec.files.items():
        images = read_idx(raw_dir / images_file.name)
        labels = read_idx(raw_dir / labels_file.name).astype(np.int64)
        if images.shape[0] != images_file.count or labels.shape[0] != labels_file.count:
            raise FetchError(
                f"{split}: expected {images_file.count} images and labels, got {images.shape[0]} / {labels.shape[0]}"
            )
        limit = cfg.train_limit if split == "train" else cfg.test_limit
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        splits[split] = ImageSplit(images=images, labels=labels)
    write_dataset(dataset_dir, splits, list(spec.classes), source=origin, name=spec.name)
    (dataset_dir / "limits.txt").write_text(f"train_limit={cfg.train_limit}\ntest_limit={cfg.test_limit}\n")
    log.info("wrote %s: %s", dataset_dir, {k: len(v) for k, v in splits.items()})
    return dataset_dir


def _is_current(dataset_dir: Path, cfg: DataConfig) -> bool:
    limits = dataset_dir / "limits.txt"
    if not limits.is_file() or not (dataset_dir / "dataset.json").is_file():
        return False
    try:
        read_metadata(dataset_dir)
    except Exception:  # a damaged copy is simply fetched again
        return False
    return limits.read_text() == f"train_limit={cfg.train_limit}\ntest_limit={cfg.test_limit}\n"


def _ensure_raw_files(spec: IdxDatasetSpec, raw_dir: Path, sources: list[str], timeout_s: float) -> str:
    names = [f.name for pair in spec.files.values() for f in pair]
    marker = raw_dir / "SOURCE"
    if all((raw_dir / n).is_file() for n in names) and marker.is_file():
        return marker.read_text().strip()
    errors = []
    for source in sources:
        try:
            with tempfile.TemporaryDirectory(prefix="modelyard-fetch-") as tmp:
                tmp_dir = Path(tmp)
                if source == "canonical":
                    origin = _download_canonical(spec, tmp_dir, timeout_s)
                elif source == "debian":
                    origin = _download_debian(spec, tmp_dir)
                else:  # config validation keeps this out; guard for direct callers
                    raise FetchError(f"unknown source {source!r}")
                for name in names:
                    read_idx(tmp_dir / name)  # refuse a truncated or foreign file before keeping it
                raw_dir.mkdir(parents=True, exist_ok=True)
                for name in names:
                    shutil.move(tmp_dir / name, raw_dir / name)
                marker.write_text(origin + "\n")
                log.info("fetched %s from %s", spec.name, origin)
                return origin
        except (FetchError, OSError, urllib.error.URLError, ValueError) as exc:
            log.warning("source %s failed for %s: %s", source, spec.name, exc)
            errors.append(f"{source}: {exc}")
    raise FetchError(f"could not fetch {spec.name} from any source: " + "; ".join(errors))


def _download_canonical(spec: IdxDatasetSpec, out_dir: Path, timeout_s: float) -> str:
    for name, md5 in ((f.name, f.md5) for pair in spec.files.values() for f in pair):
        last_error: Exception | None = None
        for mirror in spec.mirrors:
            try:
                with urllib.request.urlopen(mirror + name, timeout=timeout_s) as response:
                    data = response.read()
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                last_error = exc
                continue
            if hashlib.md5(data).hexdigest() != md5:
                last_error = FetchError(f"{mirror}{name}: md5 mismatch")
                continue
            (out_dir / name).write_bytes(data)
            break
        else:
            raise FetchError(f"{name}: {last_error}")
    return f"canonical:{spec.mirrors[0]}"


def _download_debian(spec: IdxDatasetSpec, out_dir: Path) -> str:
    """`apt-get download` + `dpkg -x`: no root needed, nothing installed system-wide."""
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise FetchError(f"'{tool}' not found; the Debian source needs a Debian-like system")
    proc = subprocess.run(
        ["apt-get", "download", spec.debian_package], cwd=out_dir, capture_output=True, text=True, timeout=600
    )
    debs = sorted(out_dir.glob(f"{spec.debian_package}_*.deb"))
    if proc.returncode != 0 or not debs:
        raise FetchError(f"apt-get download {spec.debian_package} failed: {proc.stderr.strip()[-500:]}")
    unpack = out_dir / "unpacked"
    subprocess.run(["dpkg", "-x", str(debs[0]), str(unpack)], check=True, capture_output=True, timeout=600)
    for pair in spec.files.values():
        for f in pair:
            shutil.move(unpack / spec.debian_path / f.name, out_dir / f.name)
    return f"debian:{debs[0].name}"


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (gzip or plain): big-endian header, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path.name} is not an unsigned-byte idx file")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(data) - header != expected:
        raise ValueError(f"{path.name}: header says {shape} ({expected} bytes), found {len(data) - header} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
