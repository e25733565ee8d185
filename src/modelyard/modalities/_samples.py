"""What every modality's `write_samples` shares: which rows to write and what to call the file."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np


def slug(label: str) -> str:
    """'T-shirt/top' -> 't-shirt-top', 'Ankle boot' -> 'ankle-boot'."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def first_of_each_class(labels: np.ndarray, classes: list[str]) -> Iterator[tuple[str, int]]:
    """(class name, row of its first example) for every class the split holds."""
    for index, label in enumerate(classes):
        hits = np.flatnonzero(np.asarray(labels) == index)
        if len(hits):
            yield label, int(hits[0])


def write_first_of_each_class(labels: np.ndarray, classes: list[str], out_dir: Path, suffix: str,
                              write: Callable[[Path, int], None]) -> list[Path]:
    """`out_dir/<class><suffix>` for every class, `write(path, row)` filling it from that class's first row."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for label, row in first_of_each_class(labels, classes):
        path = out_dir / f"{slug(label)}{suffix}"
        write(path, row)
        written.append(path)
    return written
