"""The dataset registry: each dataset is described once, in its own module here, found by its file name.

A module `<name>.py` defines `SPEC = DatasetSpec(...)`: what the data are (modality, classes, the schema its
GX suite checks), where they may come from (sources tried in the order the config gives, the canonical
online source first), how a source's raw files are read into splits, the suite's thresholds that suit it,
and its augmentation policy. Adding a dataset is adding its module and a recipe that uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.plugins import load_member, member_names

PACKAGE = __name__


@dataclass(frozen=True)
class SourceContext:
    """What a source may need besides the directory it fills."""

    timeout_s: float = 15.0
    local_dir: Path | None = None  # the user's copy, for the `local` source


# A source downloads or copies a dataset's raw files into a directory: (raw_dir, context) -> origin string.
SourceFn = Callable[[Path, SourceContext], str]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    modality: str  # a member of modelyard.modalities
    schema: Any  # the modality's schema of this dataset (image shape, text lengths, series channels and lengths)
    classes: tuple[str, ...]
    description: str
    sources: dict[str, SourceFn]  # name -> fetcher, in the dataset's preferred order
    read_raw: Callable[[Path], dict[str, Any]]  # raw_dir -> full splits ("train", "test")
    raw_marker: str  # a file or directory under raw_dir that proves a complete copy is there
    # Rows per split a complete copy has; None where sources differ (the reader checks its own files then).
    split_sizes: dict[str, int] | None = None
    class_fraction: tuple[float, float] = (0.0, 1.0)  # GX: bounds of one class's share of a split
    max_train_test_overlap: float = 0.01  # GX: share of test rows that may also be in train
    augment: dict[str, Any] = field(default_factory=dict)  # the modality's policy settings that suit it
    license: str = ""


def dataset_names() -> tuple[str, ...]:
    return member_names(PACKAGE)


def get_dataset(name: str) -> DatasetSpec:
    """The spec of a registered dataset (its module is imported on first use)."""
    return load_member(PACKAGE, name, kind="dataset").SPEC
