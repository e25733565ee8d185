"""The series part of the Great Expectations suite on real JapaneseVowels utterances: the real data pass;
each kind of damage is caught, with the expectation and the rows named."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.config import ValidateConfig
from modelyard.data.datasets import DatasetSpec
from modelyard.data.validate import validate_splits
from modelyard.modalities.series import SeriesSchema, SeriesSplit

SPEC = DatasetSpec(name="vowels-fixture", modality="series", schema=SeriesSchema(channels=12, length=(7, 29)),
                   classes=tuple(f"speaker {i}" for i in range(1, 10)), description="committed test utterances",
                   sources={}, read_raw=lambda raw: {}, raw_marker="", class_fraction=(0.05, 0.30),
                   max_train_test_overlap=0.0)


@pytest.fixture(scope="module")
def splits(vowels):
    train_rows = np.flatnonzero(np.arange(len(vowels)) % 3 != 0)
    return {"train": vowels.take(train_rows), "test": vowels.take(np.flatnonzero(np.arange(len(vowels)) % 3 == 0))}


def failed(splits) -> set[tuple[str, str]]:
    return {(c.table, c.column or c.expectation) for c in validate_splits(splits, ValidateConfig(), SPEC).failed}


def test_real_utterances_pass(splits):
    report = validate_splits(splits, ValidateConfig(), SPEC)
    assert report.success, report.to_markdown()
    assert {c.column for c in report.checks if c.table == "rows"} >= {"channels", "length", "nonfinite", "abs_max"}


def edited(split: SeriesSplit, row: int, value) -> SeriesSplit:
    series = list(split.series)
    series[row] = value
    return SeriesSplit(series, split.labels)


@pytest.mark.parametrize(("damage", "expected"), [
    (lambda s: edited(s, 2, np.where(np.arange(s.series[2].size).reshape(s.series[2].shape) == 5, np.nan,
                                     s.series[2])), {("rows", "nonfinite")}),
    (lambda s: edited(s, 4, s.series[4][:, :11]), {("rows", "channels")}),
    (lambda s: edited(s, 1, np.concatenate([s.series[1]] * 4)), {("rows", "length")}),
    (lambda s: edited(s, 1, s.series[1][:3]), {("rows", "length")}),
    (lambda s: edited(s, 0, s.series[0] * 1e5), {("rows", "abs_max")}),
    (lambda s: edited(s, 0, s.series[0][:, 0]), {("rows", "ndim"), ("rows", "channels")}),
    (lambda s: SeriesSplit(s.series, np.where(np.arange(len(s)) == 3, 9, s.labels)), {("rows", "label")}),
])
def test_each_kind_of_damage_to_train_is_caught(splits, damage, expected):
    assert failed({"train": damage(splits["train"]), "test": splits["test"]}) == expected


def test_test_series_in_train_are_caught_exactly_and_when_rounded(splits):
    train, test = splits["train"], splits["test"]
    exact = SeriesSplit(train.series + test.series[:5], np.concatenate([train.labels, test.labels[:5]]))
    assert ("overlap", "in_train") in failed({"train": exact, "test": test})
    nudged = [np.nextafter(s, np.float32(np.inf)) for s in test.series[:5]]  # one float32 step off: a re-export
    near = SeriesSplit(train.series + nudged, np.concatenate([train.labels, test.labels[:5]]))
    assert failed({"train": near, "test": test}) == {("overlap", "near_in_train")}
