"""Series splits: multivariate series of varying length, each (T, C) float32, and their labels. On disk one
npz per split: every frame of every series stacked (sum T, C), the offsets where each series starts, the
labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class SplitFileError(RuntimeError):
    """A split file that is not in the series format."""


@dataclass(frozen=True)
class SeriesSchema:
    """What a dataset's series look like: channels per frame, and the bounds of a series' length in frames."""

    channels: int
    length: tuple[int, int]
    max_abs_value: float = 1e4  # a value past this is a unit or export error, not a measurement


@dataclass(frozen=True)
class SeriesSplit:
    series: list[np.ndarray]  # each (T, C) float32
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, rows: Any) -> SeriesSplit:
        if isinstance(rows, slice):
            return SeriesSplit(series=self.series[rows], labels=self.labels[rows])
        rows = np.asarray(rows)
        return SeriesSplit(series=[self.series[i] for i in rows], labels=self.labels[rows])

    @property
    def inputs(self) -> list[np.ndarray]:
        return self.series


def stack(series: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(every frame stacked, offsets): series i is frames[offsets[i]:offsets[i + 1]]."""
    lengths = [len(s) for s in series]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    frames = np.concatenate(series) if series else np.zeros((0, 0), dtype=np.float32)
    return frames, offsets


def write_npz(path: Path, split: SeriesSplit) -> dict[str, Any]:
    frames, offsets = stack(split.series)
    np.savez_compressed(path, frames=frames, offsets=offsets, labels=split.labels)
    lengths = np.diff(offsets)
    return {"channels": int(frames.shape[1]) if frames.ndim == 2 else 0,
            "length": [int(lengths.min()), int(lengths.max())] if len(lengths) else [0, 0]}


def read_npz(path: Path) -> SeriesSplit:
    try:
        with np.load(path, allow_pickle=False) as npz:
            frames, offsets, labels = npz["frames"], npz["offsets"], npz["labels"]
    except (KeyError, ValueError, OSError) as exc:
        raise SplitFileError(f"{path} is not a series split (want arrays 'frames', 'offsets', 'labels'): {exc}") from exc
    if offsets.ndim != 1 or len(offsets) != len(labels) + 1 or offsets[0] != 0 or offsets[-1] != len(frames) \
            or np.any(np.diff(offsets) < 0):
        raise SplitFileError(f"{path}: offsets do not cut {len(frames)} frames into {len(labels)} series")
    return SeriesSplit(series=[frames[a:b] for a, b in zip(offsets[:-1], offsets[1:])], labels=labels)
