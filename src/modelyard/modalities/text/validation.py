"""The text part of the Great Expectations suite: one row per text (a string? valid UTF-8? blank? how long),
each split's mean length in words, and duplicates of test texts in train, exact or near."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from modelyard.modalities.text.split import TextSchema, TextSplit, near_duplicate_key


def row_table(name: str, split: TextSplit) -> pd.DataFrame:
    labels = np.asarray(split.labels)
    n = min(len(split.texts), len(labels))
    texts = split.texts[:n]
    strings = [t if isinstance(t, str) else "" for t in texts]
    return pd.DataFrame({
        "split": name,
        "index": np.arange(n),
        "label": labels[:n],
        "is_string": [isinstance(t, str) for t in texts],
        "valid_utf8": [_utf8(t) for t in strings],
        "blank": [not t.strip() for t in strings],
        "chars": [len(t) for t in strings],
        "words": [len(t.split()) for t in strings],
    })


def lengths_table(splits: Mapping[str, TextSplit]) -> pd.DataFrame:
    """Mean words per split: a truncated export shows as a collapsed mean."""
    return pd.DataFrame([{"split": name, "mean_words": float(np.mean([len(t.split()) if isinstance(t, str) else 0
                                                                       for t in split.texts] or [0]))}
                         for name, split in splits.items()])


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: bytes that were never valid UTF-8
        return False
    return "\ufffd" not in text  # a replacement character: bytes that were lost when the file was decoded


def expectations(schema: TextSchema, num_classes: int) -> dict[str, list[Any]]:
    import great_expectations as gx

    E = gx.expectations
    low, high = schema.chars
    return {
        "rows": [
            E.ExpectColumnValuesToBeInSet(column="is_string", value_set=[True]),
            E.ExpectColumnValuesToBeInSet(column="valid_utf8", value_set=[True]),
            E.ExpectColumnValuesToBeInSet(column="blank", value_set=[False]),
            E.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(num_classes))),
            E.ExpectColumnValuesToBeBetween(column="chars", min_value=low, max_value=high),
        ],
        "lengths": [E.ExpectColumnValuesToBeBetween(column="mean_words", min_value=schema.mean_words[0],
                                                    max_value=schema.mean_words[1])],
    }


def duplicate_keys(split: TextSplit) -> dict[str, list[Any]]:
    """A test text is in train when the same string is, and near in train when one differing only in case,
    punctuation and spacing is."""
    strings = [t if isinstance(t, str) else "" for t in split.texts]
    return {"in_train": strings, "near_in_train": [near_duplicate_key(t) for t in strings]}
