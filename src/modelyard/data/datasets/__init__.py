"""The dataset registry: each dataset is described once, in its own module here.

A `DatasetSpec` says what the data are (modality, classes, stored shape), where they may come from (sources
tried in the order the config gives, canonical online source first), how a source's raw files are read into
the on-disk format of `modelyard.data.dataset`, the Great Expectations thresholds that suit it, and the
augmentation that suits it. Adding a dataset is one module here plus its entry in `_MODULES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from modelyard.data.dataset import Split

# A source downloads or copies a dataset's raw files into a directory: (raw_dir, context) -> origin string.
SourceFn = Callable[[Path, "SourceContext"], str]


@dataclass(frozen=True)
class SourceContext:
    """What a source may need besides the directory it fills."""

    timeout_s: float = 15.0
    local_dir: Path | None = None  # the user's copy, for the `local` source


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    modality: Literal["image", "text"]
    classes: tuple[str, ...]
    description: str
    sources: dict[str, SourceFn]  # name -> fetcher, in the dataset's preferred order
    read_raw: Callable[[Path], dict[str, Split]]  # raw_dir -> full splits
    raw_marker: str  # a file or directory under raw_dir that proves a complete copy is there
    # Rows per split a complete copy has; None where sources differ (the reader checks its own files then).
    split_sizes: dict[str, int] | None = None
    # Images: stored shape (height, width, channels); channels 1 is stored as (N, H, W), 3 as (N, H, W, 3).
    image_shape: tuple[int, int, int] | None = None
    # Text: bounds of one text's length in characters, and of a split's mean length in words.
    text_chars: tuple[int, int] = (1, 100_000)
    mean_words: tuple[float, float] = (1.0, 10_000.0)
    # Great Expectations thresholds that suit this dataset.
    class_fraction: tuple[float, float] = (0.0, 1.0)
    max_train_test_overlap: float = 0.01
    # The augmentation policy that suits it (overridable per run through `augment.*`).
    augment: dict[str, float | int] = field(default_factory=dict)
    license: str = ""

    @property
    def channels(self) -> int:
        if self.image_shape is None:
            raise ValueError(f"{self.name} is a {self.modality} dataset: it has no image channels")
        return self.image_shape[2]

    def source_names(self) -> list[str]:
        return list(self.sources)


class UnknownDatasetError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; this one is a sentence
        return str(self.args[0])


_MODULES = {"fashion_mnist": "fashion_mnist", "cifar10": "cifar10", "rt_polarity": "rt_polarity",
            "bbc_news": "bbc_news"}
DATASET_NAMES = tuple(_MODULES)


def get_dataset(name: str) -> DatasetSpec:
    """The spec of a registered dataset (its module is imported on first use)."""
    if name not in _MODULES:
        raise UnknownDatasetError(f"unknown dataset {name!r}; available: {', '.join(DATASET_NAMES)}")
    return importlib.import_module(f"{__name__}.{_MODULES[name]}").SPEC
