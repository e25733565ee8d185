"""The image part of the Great Expectations suite: one row per image, and what each row must hold."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from modelyard.modalities.image.split import ImageSchema, ImageSplit


def row_table(name: str, split: ImageSplit) -> pd.DataFrame:
    """Shape, dtype and pixel range of every image; works on broken data too (wrong shapes, floats, NaNs)."""
    images, labels = split.images, np.asarray(split.labels)
    n = min(len(images), len(labels))
    flat = images[:n].reshape(n, -1) if n else np.zeros((0, 1))
    numeric = np.issubdtype(images.dtype, np.number)
    as_float = flat.astype(np.float64) if numeric else np.full(flat.shape, np.nan)
    finite = np.isfinite(as_float)
    with np.errstate(invalid="ignore"):
        pix_min = np.where(finite, as_float, np.inf).min(axis=1) if n else np.zeros(0)
        pix_max = np.where(finite, as_float, -np.inf).max(axis=1) if n else np.zeros(0)
    return pd.DataFrame({
        "split": name,
        "index": np.arange(n),
        "label": labels[:n],
        "ndim": images.ndim,
        "height": images.shape[1] if images.ndim > 1 else 0,
        "width": images.shape[2] if images.ndim > 2 else 0,
        "channels": (images.shape[3] if images.ndim > 3 else 1) if images.ndim > 2 else 0,
        "dtype": str(images.dtype),
        "pixel_min": pix_min,
        "pixel_max": pix_max,
        "nonfinite": (~finite).sum(axis=1),
    })


def expectations(schema: ImageSchema, num_classes: int) -> dict[str, list[Any]]:
    import great_expectations as gx

    E = gx.expectations
    return {"rows": [
        E.ExpectColumnValuesToBeInSet(column="ndim", value_set=[3 if schema.channels == 1 else 4]),
        E.ExpectColumnValuesToBeInSet(column="height", value_set=[schema.height]),
        E.ExpectColumnValuesToBeInSet(column="width", value_set=[schema.width]),
        E.ExpectColumnValuesToBeInSet(column="channels", value_set=[schema.channels]),
        E.ExpectColumnValuesToBeInSet(column="dtype", value_set=["uint8"]),
        E.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(num_classes))),
        E.ExpectColumnValuesToBeBetween(column="nonfinite", min_value=0, max_value=0),
        E.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=0, max_value=255),
        E.ExpectColumnValuesToBeBetween(column="pixel_max", min_value=0, max_value=255),
        # An all-black image carries no information: a sign of a truncated or zeroed file.
        E.ExpectColumnValuesToBeBetween(column="pixel_max", min_value=1, mostly=0.999),
    ]}


def duplicate_keys(split: ImageSplit) -> dict[str, list[Any]]:
    """An image is in train when the same bytes are."""
    if len(split.images) == 0:
        return {"in_train": []}
    flat = np.ascontiguousarray(split.images.reshape(len(split.images), -1))
    return {"in_train": [row.tobytes() for row in flat]}
