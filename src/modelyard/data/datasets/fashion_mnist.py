"""Fashion-MNIST: 70k 28x28 grayscale images of clothing, 10 balanced classes (Zalando, MIT).

Sources: the canonical download (the mirror torchvision uses) when the network allows, else Debian's
`dataset-fashion-mnist` package, which ships the same four idx files, else a local directory holding them.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from modelyard.data.datasets import DatasetSpec, SourceContext
from modelyard.data.datasets._sources import SourceError, read_idx
from modelyard.modalities.image import ImageSchema, ImageSplit

MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
# split -> ((images file, md5 of the canonical .gz), (labels file, md5))
FILES = {
    "train": (("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
              ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe")),
    "test": (("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
             ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310")),
}
NAMES = [name for pair in FILES.values() for name, _ in pair]
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_PATH = "usr/share/datasets/fashion-mnist"


def canonical(raw_dir: Path, ctx: SourceContext) -> str:
    for name, md5 in (f for pair in FILES.values() for f in pair):
        last_error: Exception | None = None
        for mirror in MIRRORS:
            try:
                with urllib.request.urlopen(mirror + name, timeout=ctx.timeout_s) as response:
                    data = response.read()
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                last_error = exc
                continue
            if hashlib.md5(data).hexdigest() != md5:
                last_error = SourceError(f"{mirror}{name}: md5 mismatch")
                continue
            (raw_dir / name).write_bytes(data)
            break
        else:
            raise SourceError(f"{name}: {last_error}")
    return f"canonical:{MIRRORS[0]}"


def debian(raw_dir: Path, ctx: SourceContext) -> str:
    """`apt-get download` + `dpkg -x`: no root needed, nothing installed system-wide."""
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise SourceError(f"'{tool}' not found; the Debian source needs a Debian-like system")
    work = raw_dir / ".deb"
    work.mkdir()
    proc = subprocess.run(["apt-get", "download", DEBIAN_PACKAGE], cwd=work, capture_output=True, text=True,
                          timeout=600)
    debs = sorted(work.glob(f"{DEBIAN_PACKAGE}_*.deb"))
    if proc.returncode != 0 or not debs:
        raise SourceError(f"apt-get download {DEBIAN_PACKAGE} failed: {proc.stderr.strip()[-500:]}")
    subprocess.run(["dpkg", "-x", str(debs[0]), str(work / "unpacked")], check=True, capture_output=True, timeout=600)
    for name in NAMES:
        shutil.move(work / "unpacked" / DEBIAN_PATH / name, raw_dir / name)
    shutil.rmtree(work)
    return f"debian:{debs[0].name}"


def local(raw_dir: Path, ctx: SourceContext) -> str:
    """A directory holding the four idx files (gzipped), e.g. torchvision's `FashionMNIST/raw`."""
    if ctx.local_dir is None:
        raise SourceError("no local directory given (set paths.local_source_dir)")
    missing = [n for n in NAMES if not (ctx.local_dir / n).is_file()]
    if missing:
        raise SourceError(f"{ctx.local_dir} lacks {', '.join(missing)}")
    for name in NAMES:
        shutil.copyfile(ctx.local_dir / name, raw_dir / name)
    return f"local:{ctx.local_dir}"


def read_raw(raw_dir: Path) -> dict[str, ImageSplit]:
    splits = {}
    for split, ((images_file, _), (labels_file, _)) in FILES.items():
        images = read_idx(raw_dir / images_file)
        labels = read_idx(raw_dir / labels_file).astype(np.int64)
        splits[split] = ImageSplit(images=images, labels=labels)
    return splits


SPEC = DatasetSpec(
    name="fashion_mnist",
    modality="image",
    schema=ImageSchema(height=28, width=28, channels=1),
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    description="70k 28x28 grayscale clothing images, 10 balanced classes",
    split_sizes={"train": 60000, "test": 10000},
    sources={"canonical": canonical, "debian": debian, "local": local},
    read_raw=read_raw,
    raw_marker=NAMES[-1],
    class_fraction=(0.05, 0.20),  # balanced at 10%; a small cut may wander, a collapsed class may not
    augment={"crop_padding": 2, "hflip_prob": 0.5, "erasing_prob": 0.25},
    license="MIT",
)
