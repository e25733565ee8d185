"""Export real test images as PNG files, one per class, for trying the endpoint by hand."""

from __future__ import annotations

import os
import re
from pathlib import Path

from modelyard.data.dataset import load_split, read_metadata


def slug(label: str) -> str:
    """'T-shirt/top' -> 't-shirt-top', 'Ankle boot' -> 'ankle-boot'."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def export_samples(dataset_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], split: str = "test") -> list[Path]:
    """Write the first image of each class in `split` to `<out_dir>/<class-slug>.png`."""
    from PIL import Image

    meta = read_metadata(dataset_dir)
    data = load_split(dataset_dir, split)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, label in enumerate(meta["classes"]):
        hits = (data.labels == index).nonzero()[0]
        if len(hits) == 0:
            continue
        path = out / f"{slug(label)}.png"
        Image.fromarray(data.images[hits[0]]).save(path)  # gray (H, W) or RGB (H, W, 3)
        written.append(path)
    return written
