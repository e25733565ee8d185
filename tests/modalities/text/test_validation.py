"""modelyard.modalities.text.validation: the text part of the GX suite stops broken copies of the real Rotten
Tomatoes data (empty texts, unknown labels, non-strings, invalid UTF-8, leakage exact and near, a collapsed
class, truncated texts) with the rows at fault."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.config import ValidateConfig
from modelyard.data.dataset import load_split, read_metadata, write_dataset
from modelyard.data.datasets import get_dataset
from modelyard.data.validate import DataValidationError, validate_dataset, validate_splits
from modelyard.modalities.text import TextSplit
from modelyard.modalities.text.validation import duplicate_keys, row_table


@pytest.fixture(scope="module")
def rt_splits(rt_polarity_dir):
    return {s: load_split(rt_polarity_dir, s) for s in ("train", "test")}


def failed(report):
    return {(c.table, c.column) for c in report.failed}


def check(splits, dataset="rt_polarity"):
    return validate_splits(splits, ValidateConfig(), get_dataset(dataset))


def test_the_row_table_describes_every_text_even_broken_ones(rt_splits):
    test = rt_splits["test"]
    texts = [test.texts[0], 42, "lost \ufffd", "lone \udce9", "  "]
    table = row_table("test", TextSplit(texts, test.labels[:5]))
    assert table["is_string"].tolist() == [True, False, True, True, True]
    assert table["valid_utf8"].tolist() == [True, True, False, False, True]  # a non-string is reported once
    assert table["blank"].tolist() == [False, True, False, False, True]
    assert table["chars"][0] == len(test.texts[0]) and table["words"][0] == len(test.texts[0].split())


def test_near_duplicate_keys_ignore_case_punctuation_and_spacing(rt_splits):
    text = rt_splits["test"].texts[0]
    keys = duplicate_keys(TextSplit([text, text.upper().replace(",", " , ") + "!!"], np.array([0, 0])))
    assert keys["in_train"][0] != keys["in_train"][1] and keys["near_in_train"][0] == keys["near_in_train"][1]


def test_empty_and_blank_texts_are_caught_with_their_rows(rt_splits):
    train = rt_splits["train"]
    texts = list(train.texts)
    texts[4], texts[40] = "", "   \n\t "
    report = check({**rt_splits, "train": TextSplit(texts, train.labels)})
    assert ("rows", "blank") in failed(report)
    blank = next(c for c in report.failed if c.column == "blank")
    assert blank.unexpected_count == 2
    assert {(e["split"], e["index"]) for e in blank.examples} == {("train", 4), ("train", 40)}


def test_unknown_labels_non_strings_and_invalid_utf8_are_caught(rt_splits):
    test = rt_splits["test"]
    texts, labels = list(test.texts), test.labels.copy()
    labels[[1, 2]] = [2, -1]
    texts[7] = 42
    texts[8] = "bytes lost in decoding \ufffd\ufffd"
    texts[9] = "a lone surrogate \udce9"
    report = check({**rt_splits, "test": TextSplit(texts, labels)})
    assert {("rows", "label"), ("rows", "is_string"), ("rows", "valid_utf8")} <= failed(report)
    assert next(c for c in report.failed if c.column == "valid_utf8").unexpected_count == 2
    assert next(c for c in report.failed if c.column == "label").unexpected_count == 2


def test_leakage_exact_and_near_is_caught(rt_splits):
    train, test = rt_splits["train"], rt_splits["test"]
    exact = TextSplit(train.texts + test.texts[:3], np.concatenate([train.labels, test.labels[:3]]))
    found = failed(check({**rt_splits, "train": exact}))
    assert {("overlap", "in_train"), ("overlap", "near_in_train")} <= found
    near_texts = [t.upper().replace(",", " ,") + "!" for t in test.texts[:3]]
    near = TextSplit(train.texts + near_texts, np.concatenate([train.labels, test.labels[:3]]))
    found = failed(check({**rt_splits, "train": near}))
    assert ("overlap", "near_in_train") in found and ("overlap", "in_train") not in found


def test_a_collapsed_class_and_truncated_texts_are_caught(rt_splits):
    train = rt_splits["train"]
    keep = np.flatnonzero((train.labels == 0) | (np.arange(len(train)) % 10 == 0))
    collapsed = train.take(keep)
    report = check({**rt_splits, "train": collapsed})
    assert ("classes", "fraction") in failed(report)
    chopped = TextSplit([t[:1] for t in train.texts], train.labels)  # one character a sentence
    assert {("rows", "chars"), ("lengths", "mean_words")} <= failed(check({**rt_splits, "train": chopped}))


def test_a_broken_copy_on_disk_stops_with_the_report(rt_polarity_dir, rt_splits, tmp_path):
    meta = read_metadata(rt_polarity_dir)
    train = rt_splits["train"]
    texts = list(train.texts)
    texts[0] = ""
    splits = {"train": TextSplit(texts, train.labels), "test": rt_splits["test"]}
    broken = write_dataset(tmp_path / "rt_polarity", splits, meta["classes"], source="broken copy",
                           name="rt_polarity", modality="text")
    with pytest.raises(DataValidationError) as err:
        validate_dataset(broken, ValidateConfig(), tmp_path / "report")
    assert "rows.expect_column_values_to_be_in_set(blank)" in str(err.value)
    assert "FAILED" in (tmp_path / "report" / "report.md").read_text()


def test_a_non_string_survives_the_round_trip_to_disk_to_be_reported(rt_polarity_dir, rt_splits, tmp_path):
    """A broken export's number or null is kept as found by the loader, so the suite can name its row."""
    meta = read_metadata(rt_polarity_dir)
    test = rt_splits["test"]
    texts = list(test.texts)
    texts[3], texts[5] = None, 7
    splits = {"train": rt_splits["train"], "test": TextSplit(texts, test.labels)}
    broken = write_dataset(tmp_path / "rt_polarity", splits, meta["classes"], source="broken copy",
                           name="rt_polarity", modality="text")
    assert load_split(broken, "test").texts[3] is None
    with pytest.raises(DataValidationError) as err:
        validate_dataset(broken, ValidateConfig(), tmp_path / "report")
    is_string = next(c for c in err.value.report.failed if c.column == "is_string")
    assert {(e["split"], e["index"]) for e in is_string.examples} == {("test", 3), ("test", 5)}
