"""Time series: multivariate series of varying length (frames of C channels); per-channel normalisation;
jitter, scaling and time-warp augmentation."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelyard.modalities import Limits, Modality, array_sha256
from modelyard.modalities.series.augment import SeriesPolicy
from modelyard.modalities.series.codec import SeriesCodec
from modelyard.modalities.series.preprocess import SeriesBatches, SeriesPreprocessor, pad
from modelyard.modalities.series.split import SeriesSchema, SeriesSplit, read_npz, stack, write_npz
from modelyard.modalities.series.validation import duplicate_keys, expectations, row_table

__all__ = ["MODALITY", "SeriesModality", "SeriesPolicy", "SeriesPreprocessor", "SeriesSchema", "SeriesSplit"]

# The longest series a model takes, when its family does not say: this many times the longest in training.
LENGTH_HEADROOM = 4


class SeriesModality(Modality):
    name: ClassVar[str] = "series"
    noun: ClassVar[str] = "series"
    file_suffix: ClassVar[str] = ".npz"

    def write_split(self, path: Path, split: SeriesSplit) -> dict[str, Any]:
        return write_npz(path, split)

    def read_split(self, path: Path) -> SeriesSplit:
        return read_npz(path)

    def make_split(self, inputs: list[Any], labels: Any) -> SeriesSplit:
        return SeriesSplit(series=[np.asarray(x, dtype=np.float32) for x in inputs],
                           labels=np.asarray(labels, dtype=np.int64))

    def split_sha256(self, split: SeriesSplit) -> str:
        frames, offsets = stack([np.asarray(s) for s in split.series])
        return array_sha256(frames, offsets, np.asarray(split.labels))

    def row_table(self, name: str, split: SeriesSplit):
        return row_table(name, split)

    def expectations(self, schema: SeriesSchema, num_classes: int) -> dict[str, list[Any]]:
        return expectations(schema, num_classes)

    def duplicate_keys(self, split: SeriesSplit) -> dict[str, list[Any]]:
        return duplicate_keys(split)

    def fit_statistics(self, split: SeriesSplit) -> dict[str, Any]:
        """Mean and std per channel over every training frame, and the longest series."""
        frames = np.concatenate([np.asarray(s, dtype=np.float64) for s in split.series])
        return {"mean": frames.mean(0).tolist(), "std": np.maximum(frames.std(0), 1e-6).tolist(),
                "max_length": int(max(len(s) for s in split.series))}

    def policy(self, defaults: Mapping[str, Any], changes: Mapping[str, Any]) -> SeriesPolicy:
        return SeriesPolicy.from_dict({**defaults, **changes})

    def policy_from_dict(self, doc: Mapping[str, Any]) -> SeriesPolicy:
        return SeriesPolicy.from_dict(doc)

    def fit_preprocessor(self, request: Mapping[str, Any], statistics: Mapping[str, Any],
                         schema: SeriesSchema) -> SeriesPreprocessor:
        """The fitted statistics; the family's `max_length` frames at most, else LENGTH_HEADROOM times the
        longest training series."""
        max_length = request.get("max_length") or LENGTH_HEADROOM * int(statistics["max_length"])
        return SeriesPreprocessor(channels=schema.channels, mean=tuple(statistics["mean"]),
                                  std=tuple(statistics["std"]), max_length=int(max_length),
                                  max_abs_value=schema.max_abs_value)

    def preprocessor_from_dict(self, doc: Mapping[str, Any]) -> SeriesPreprocessor:
        return SeriesPreprocessor.from_dict(doc)

    def training_arrays(self, split: SeriesSplit, preprocessor: SeriesPreprocessor) -> dict[str, np.ndarray]:
        """Raw values padded to the longest series (cut at the preprocessor's max_length), and the lengths."""
        longest = min(max(len(s) for s in split.series), preprocessor.max_length)
        values, mask = pad([np.asarray(s, dtype=np.float32) for s in split.series], preprocessor.channels, longest)
        return {"values": values, "lengths": mask.sum(1), "labels": split.labels}

    def batch_adapter(self, preprocessor: SeriesPreprocessor, policy: SeriesPolicy) -> SeriesBatches:
        return SeriesBatches(preprocessor, policy)

    def input_example(self, split: SeriesSplit, count: int) -> Any:
        import pandas as pd

        return pd.DataFrame({"series": [json.dumps(np.asarray(s).tolist()) for s in split.series[:count]]})

    def from_pyfunc(self, model_input: Any) -> list[Any]:
        """A DataFrame with a `series` column (JSON or nested lists), a list of series, or one (T, C) array."""
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            if "series" not in model_input.columns:
                raise ValueError(f"expected a 'series' column, got columns {list(model_input.columns)}")
            return [json.loads(s) if isinstance(s, str) else s for s in model_input["series"]]
        if isinstance(model_input, np.ndarray) and model_input.ndim == 2:
            return [model_input]
        return list(model_input)

    def codec(self, preprocessor: SeriesPreprocessor, limits: Limits) -> SeriesCodec:
        return SeriesCodec(preprocessor, limits)

    def write_samples(self, split: SeriesSplit, classes: list[str], out_dir: Path) -> list[Path]:
        """The first test series of each class as `<class>.json`, a request body: curl -d @<file> ...."""
        from modelyard.modalities._samples import write_first_of_each_class

        def write(path: Path, row: int) -> None:
            path.write_text(json.dumps({"series": np.asarray(split.series[row]).round(6).tolist()}) + "\n")

        return write_first_of_each_class(split.labels, classes, out_dir, ".json", write)

    def request_example(self, sample: Path, url: str) -> str:
        return f"curl -H 'content-type: application/json' -d @{sample} {url}"


MODALITY = SeriesModality()
