"""JapaneseVowels from the aeon wheel on PyPI (the archive's site is unreachable here): the official split as
published, the `.ts` reader, and what a broken file gets."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from helpers.data import fetched
from modelyard.config import DataConfig
from modelyard.data.dataset import load_split, read_metadata
from modelyard.data.datasets import SourceContext, get_dataset
from modelyard.data.datasets.japanese_vowels import FILES, read_raw, read_ts
from modelyard.data.fetch import FetchError, fetch_dataset

SPEC = get_dataset("japanese_vowels")


@pytest.fixture(scope="module")
def vowels_dir():
    return fetched("japanese_vowels")


def test_the_official_split_as_published(vowels_dir):
    meta = read_metadata(vowels_dir)
    assert meta["source"].startswith(("pypi:aeon-1.6.0", "canonical:")) and meta["modality"] == "series"
    train, test = load_split(vowels_dir, "train"), load_split(vowels_dir, "test")
    assert (len(train), len(test)) == (270, 370)
    assert Counter(train.labels.tolist()) == dict.fromkeys(range(9), 30)  # 30 utterances a speaker
    assert Counter(test.labels.tolist())[2] == 88 and min(Counter(test.labels.tolist()).values()) == 24
    lengths = [len(s) for s in train.series + test.series]
    assert (min(lengths), max(lengths)) == (7, 29) and {s.shape[1] for s in train.series} == {12}
    assert all(s.dtype == np.float32 for s in train.series[:10])
    assert meta["classes"] == [f"speaker {i}" for i in range(1, 10)]


def test_the_ts_reader_reads_channels_by_colon_and_values_by_comma(tmp_path):
    path = tmp_path / "x.ts"
    path.write_text("#comment\n@problemName x\n@dimensions 2\n@classLabel true a b\n@data\n"
                    "1,2,3:4,5,6:a\n0.5,?:7,8:b\n")
    series, labels, header = read_ts(path)
    assert labels == ["a", "b"] and header["dimensions"] == "2"
    assert series[0].tolist() == [[1, 4], [2, 5], [3, 6]]  # (T, C)
    assert np.isnan(series[1][1, 0]) and series[1][1, 1] == 8  # '?' is missing: NaN, for validation to report
    path.write_text("@data\n1,2,3:4,5:a\n")
    with pytest.raises(ValueError, match="channels differ in length"):
        read_ts(path)


def test_a_copy_with_other_speakers_or_channels_is_refused(vowels_dir, tmp_path):
    raw = vowels_dir.parent / "raw" / "japanese_vowels"
    for name in FILES.values():
        text = (raw / name).read_text()
        (tmp_path / name).write_text(text.replace(":9\n", ":10\n") if "TEST" in name else text)
    with pytest.raises(ValueError, match=r"labels \['10'\] are not speakers"):
        read_raw(tmp_path)
    (tmp_path / FILES["test"]).write_text((raw / FILES["test"]).read_text().replace("@dimensions 12", "@dimensions 3"))
    with pytest.raises(ValueError, match="3 dimensions, expected 12"):
        read_raw(tmp_path)


def test_the_local_source_reads_the_two_ts_files(vowels_dir, tmp_path):
    raw = vowels_dir.parent / "raw" / "japanese_vowels"
    out = fetch_dataset(DataConfig(dataset="japanese_vowels", sources=["local"]), tmp_path / "japanese_vowels",
                        tmp_path / "raw" / "japanese_vowels", local_dir=str(raw))
    assert read_metadata(out)["source"] == f"local:{raw}"
    assert read_metadata(out)["splits"]["test"]["sha256"] == read_metadata(vowels_dir)["splits"]["test"]["sha256"]


def test_offline_with_no_copy_every_source_says_why(tmp_path, monkeypatch):
    import modelyard.data.datasets.japanese_vowels as module

    monkeypatch.setattr(module, "CANONICAL_URL", "http://127.0.0.1:9/JapaneseVowels.zip")  # refused at once
    monkeypatch.setattr(module, "PYPI_REQUIREMENT", "aeon==0.0.0.dev0-not-a-release")
    from modelyard.data.fetch import _ensure_raw

    with pytest.raises(FetchError) as exc:
        _ensure_raw(SPEC, tmp_path / "raw", ["canonical", "pypi", "local"], SourceContext(timeout_s=3))
    message = str(exc.value)
    assert "canonical: http://127.0.0.1:9/JapaneseVowels.zip" in message
    assert "pypi: pip download aeon==0.0.0.dev0-not-a-release failed" in message
    assert "local: no local directory given (set paths.local_source_dir)" in message
