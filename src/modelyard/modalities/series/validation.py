"""The series part of the Great Expectations suite: one row per series (its shape, length, finite values and
their range), and duplicates of test series in train, exact or after rounding."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from modelyard.modalities.series.split import SeriesSchema, SeriesSplit

NEAR_DECIMALS = 3  # two series equal to this many decimals count as near copies


def row_table(name: str, split: SeriesSplit) -> pd.DataFrame:
    labels = np.asarray(split.labels)
    n = min(len(split.series), len(labels))
    rows = [_describe(np.asarray(s)) for s in split.series[:n]]
    return pd.DataFrame({
        "split": name,
        "index": np.arange(n),
        "label": labels[:n],
        "ndim": [r[0] for r in rows],
        "length": [r[1] for r in rows],
        "channels": [r[2] for r in rows],
        "nonfinite": [r[3] for r in rows],
        "abs_max": [r[4] for r in rows],
    })


def _describe(series: np.ndarray) -> tuple[int, int, int, int, float]:
    """ndim, frames, channels, non-finite values, largest finite |value| of one series (works on broken ones)."""
    numeric = np.issubdtype(series.dtype, np.number)
    values = series.astype(np.float64) if numeric else np.full(series.shape, np.nan)
    finite = np.isfinite(values)
    abs_max = float(np.abs(values[finite]).max()) if finite.any() else 0.0
    return (series.ndim, len(series) if series.ndim else 0, series.shape[1] if series.ndim == 2 else 0,
            int((~finite).sum()), abs_max)


def expectations(schema: SeriesSchema, num_classes: int) -> dict[str, list[Any]]:
    import great_expectations as gx

    E = gx.expectations
    low, high = schema.length
    return {"rows": [
        E.ExpectColumnValuesToBeInSet(column="ndim", value_set=[2]),
        E.ExpectColumnValuesToBeInSet(column="channels", value_set=[schema.channels]),
        E.ExpectColumnValuesToBeBetween(column="length", min_value=low, max_value=high),
        E.ExpectColumnValuesToBeBetween(column="nonfinite", min_value=0, max_value=0),
        E.ExpectColumnValuesToBeBetween(column="abs_max", min_value=0, max_value=schema.max_abs_value),
        E.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(num_classes))),
    ]}


def duplicate_keys(split: SeriesSplit) -> dict[str, list[Any]]:
    """A test series is in train when the same values are, and near in train when they agree to NEAR_DECIMALS
    decimals."""
    exact, near = [], []
    for series in split.series:
        array = np.asarray(series)
        numeric = np.issubdtype(array.dtype, np.number)
        exact.append((array.shape, np.ascontiguousarray(array).tobytes()))
        rounded = np.round(array.astype(np.float64), NEAR_DECIMALS) if numeric else array
        near.append((array.shape, np.ascontiguousarray(rounded).tobytes()))
    return {"in_train": exact, "near_in_train": near}
