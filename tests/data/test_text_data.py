"""Text datasets: fetched from their real sources, the fixed test split, and the GX text suite stopping
broken copies (empty texts, unknown labels, invalid UTF-8, leakage, a collapsed class) with a report."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from modelyard.config import DataConfig, ValidateConfig
from modelyard.data.dataset import TextSplit, load_split, read_metadata, write_dataset
from modelyard.data.datasets import get_dataset
from modelyard.data.datasets._text import near_duplicate_key
from modelyard.data.fetch import FetchError, fetch_dataset
from modelyard.data.validate import DataValidationError, validate_dataset, validate_splits


@pytest.fixture(scope="module")
def rt_splits(rt_polarity_dir):
    return {s: load_split(rt_polarity_dir, s) for s in ("train", "test")}


def failed(report):
    return {(c.table, c.column) for c in report.failed}


def check(splits, dataset="rt_polarity"):
    return validate_splits(splits, ValidateConfig(), get_dataset(dataset))


def test_rt_polarity_is_the_rated_snippets_with_a_fixed_stratified_split(rt_polarity_dir, rt_splits):
    meta = read_metadata(rt_polarity_dir)
    assert meta["modality"] == "text" and meta["classes"] == ["negative", "positive"]
    train, test = rt_splits["train"], rt_splits["test"]
    assert isinstance(train, TextSplit) and len(train) + len(test) == 10_566  # 10,568 rated, 2 repeated
    assert len(test) == 1056
    for split in (train, test):  # stratified: the positive share of each split is the pool's (49.6%)
        assert abs(split.labels.mean() - 0.496) < 0.005
    assert not {near_duplicate_key(t) for t in test.texts} & {near_duplicate_key(t) for t in train.texts}
    assert "a gorgeous, witty, seductive movie." in {t.lower() for t in train.texts + test.texts}


def test_the_split_is_a_function_of_the_raw_data_only(rt_polarity_dir, tmp_path):
    """A second fetch, from a user's local copy of the raw file, scores on the very same test sentences."""
    raw = rt_polarity_dir.parent / "raw" / "rt_polarity"
    local = tmp_path / "mine"
    local.mkdir()
    shutil.copy(raw / "movieReviewSnippets_GroundTruth.txt", local)
    again = fetch_dataset(DataConfig(dataset="rt_polarity", data_dir=str(tmp_path / "data"), sources=["local"],
                                     local_dir=str(local)))
    first, second = read_metadata(rt_polarity_dir), read_metadata(again)
    assert second["source"] == f"local:{local}"
    assert second["splits"]["test"]["sha256"] == first["splits"]["test"]["sha256"]
    assert second["splits"]["train"]["sha256"] == first["splits"]["train"]["sha256"]


def test_bbc_news_labels_come_from_the_folder_names(bbc_news_dir):
    meta = read_metadata(bbc_news_dir)
    assert meta["classes"] == ["business", "entertainment", "politics", "sport", "tech"]
    test = load_split(bbc_news_dir, "test")
    assert len(test) == 424
    counts = np.bincount(test.labels, minlength=5)
    assert counts.min() > 60 and counts[3] == counts.max()  # sport (with business) is the largest topic
    sport = [t for t, y in zip(test.texts, test.labels) if y == 3]
    words = " ".join(sport).lower()
    assert words.count("match") + words.count("cup") + words.count("champion") > 50


def test_real_text_datasets_pass_the_suite(rt_polarity_dir, bbc_news_dir, tmp_path):
    for directory in (rt_polarity_dir, bbc_news_dir):
        report = validate_dataset(directory, ValidateConfig(), tmp_path / directory.name)
        assert report.success, report.to_markdown()
        assert {c.table for c in report.checks} == {"splits", "texts", "lengths", "classes", "overlap"}


def test_offline_with_no_source_the_fetch_names_each_one(tmp_path):
    cfg = DataConfig(dataset="bbc_news", data_dir=str(tmp_path), sources=["canonical", "local"])
    with pytest.raises(FetchError) as err:
        fetch_dataset(cfg, timeout_s=3)
    assert "canonical:" in str(err.value) and "local: no local directory given" in str(err.value)


def test_empty_and_blank_texts_are_caught_with_their_rows(rt_splits):
    train = rt_splits["train"]
    texts = list(train.texts)
    texts[4], texts[40] = "", "   \n\t "
    report = check({**rt_splits, "train": TextSplit(texts, train.labels)})
    assert ("texts", "blank") in failed(report)
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
    assert {("texts", "label"), ("texts", "is_string"), ("texts", "valid_utf8")} <= failed(report)
    assert next(c for c in report.failed if c.column == "valid_utf8").unexpected_count == 2


def test_leakage_exact_and_near_is_caught(rt_splits):
    train, test = rt_splits["train"], rt_splits["test"]
    exact = TextSplit(train.texts + test.texts[:3], np.concatenate([train.labels, test.labels[:3]]))
    assert {("overlap", "in_train"), ("overlap", "near_in_train")} <= failed(check({**rt_splits, "train": exact}))
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
    assert {("texts", "chars"), ("lengths", "mean_words")} <= failed(check({**rt_splits, "train": chopped}))


def test_a_broken_copy_on_disk_stops_with_the_report(rt_polarity_dir, rt_splits, tmp_path):
    meta = read_metadata(rt_polarity_dir)
    train = rt_splits["train"]
    texts = list(train.texts)
    texts[0] = ""
    broken = write_dataset(tmp_path / "rt_polarity", {"train": TextSplit(texts, train.labels), "test": rt_splits["test"]},
                           meta["classes"], source="broken copy", name="rt_polarity")
    with pytest.raises(DataValidationError) as err:
        validate_dataset(broken, ValidateConfig(), tmp_path / "report")
    assert "texts.expect_column_values_to_be_in_set(blank)" in str(err.value)
    assert "FAILED" in (tmp_path / "report" / "report.md").read_text()
