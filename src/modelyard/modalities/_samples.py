"""What every modality's `write_samples` shares: which rows to write and what to call the file."""

from __future__ import annotations

import re
from collections.abc import Iterator

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
