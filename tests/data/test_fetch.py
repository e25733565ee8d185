"""modelyard.data.fetch: the real Fashion-MNIST through the project's fetch code, the raw copy reused, limits
cut from it, and every way a source can fail reported without leaving half-written files."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest

from helpers.paths import TEST_DATA_DIR
from modelyard.config import DataConfig
from modelyard.data.dataset import DatasetError, load_split, read_metadata, split_sha256
from modelyard.data.datasets.fashion_mnist import read_idx
from modelyard.data.fetch import FetchError, fetch_dataset, is_current

SHARED_RAW = TEST_DATA_DIR / "raw" / "fashion_mnist"


def snapshot(directory):
    return {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}


def test_fetch_produces_the_documented_format(fashion_mnist_dir):
    meta = read_metadata(fashion_mnist_dir)
    assert meta["format"] == "modelyard-dataset/2"
    assert (meta["name"], meta["modality"]) == ("fashion_mnist", "image")
    assert meta["classes"][6] == "Shirt" and len(meta["classes"]) == 10
    assert {k: v["count"] for k, v in meta["splits"].items()} == {"train": 60000, "test": 10000}
    assert meta["splits"]["train"]["image_shape"] == [28, 28]
    train = load_split(fashion_mnist_dir, "train")
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == np.uint8
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert meta["splits"]["train"]["sha256"] == split_sha256(fashion_mnist_dir, train)  # the recorded hash
    assert (fashion_mnist_dir / "limits.txt").read_text() == "train_limit=None\ntest_limit=None\n"


def test_second_fetch_reuses_what_is_there(fashion_mnist_dir):
    before, raw_before = snapshot(fashion_mnist_dir), snapshot(SHARED_RAW)
    again = fetch_dataset(DataConfig(dataset="fashion_mnist"), fashion_mnist_dir, SHARED_RAW)
    assert again == fashion_mnist_dir
    assert snapshot(fashion_mnist_dir) == before
    assert snapshot(SHARED_RAW) == raw_before


def test_limits_cut_a_subset_from_the_cached_raw_files(fashion_mnist_dir, tmp_path):
    out = tmp_path / "fashion_mnist"
    # sources=["debian"] would need apt-get: the shared raw copy is used, nothing is downloaded.
    cfg = DataConfig(dataset="fashion_mnist", train_limit=500, test_limit=100, sources=["debian"])
    raw_before = snapshot(SHARED_RAW)
    assert fetch_dataset(cfg, out, SHARED_RAW) == out
    assert snapshot(SHARED_RAW) == raw_before
    assert len(load_split(out, "train")) == 500 and len(load_split(out, "test")) == 100
    full = load_split(fashion_mnist_dir, "train")
    assert np.array_equal(load_split(out, "train").images, full.images[:500])
    assert is_current(out, cfg)
    assert not is_current(out, cfg.model_copy(update={"train_limit": 400}))  # another cut is not this one
    assert not is_current(out, DataConfig(dataset="cifar10", train_limit=500, test_limit=100))
    recut = fetch_dataset(cfg.model_copy(update={"train_limit": 400}), out, SHARED_RAW)
    assert len(load_split(recut, "train")) == 400


def test_a_damaged_copy_is_not_current_and_is_fetched_again(fashion_mnist_dir, tmp_path):
    out = tmp_path / "fashion_mnist"
    cfg = DataConfig(dataset="fashion_mnist", train_limit=300, test_limit=50)
    fetch_dataset(cfg, out, SHARED_RAW)
    (out / "dataset.json").write_text("{ truncated")
    assert not is_current(out, cfg)
    fetch_dataset(cfg, out, SHARED_RAW)
    assert json.loads((out / "dataset.json").read_text())["splits"]["train"]["count"] == 300


def test_read_idx_rejects_truncated_and_foreign_files(fashion_mnist_dir, tmp_path):
    raw = SHARED_RAW / "t10k-labels-idx1-ubyte.gz"
    data = gzip.decompress(raw.read_bytes())
    assert read_idx(raw).shape == (10000,)
    (tmp_path / "short").write_bytes(data[:-10])
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "short")
    (tmp_path / "foreign").write_bytes(b"PK\x03\x04not an idx file")
    with pytest.raises(ValueError, match="not an unsigned-byte idx"):
        read_idx(tmp_path / "foreign")


def test_no_working_source_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get, no dpkg
    cfg = DataConfig(dataset="fashion_mnist", sources=["debian", "local"])
    with pytest.raises(FetchError) as exc:
        fetch_dataset(cfg, tmp_path / "data" / "fashion_mnist", tmp_path / "raw" / "fashion_mnist",
                      timeout_s=1)
    message = str(exc.value)
    assert message.startswith("could not fetch fashion_mnist from any source (debian, local)")
    assert "debian: 'apt-get' not found" in message and "local: no local directory given" in message
    assert not (tmp_path / "raw" / "fashion_mnist").exists()  # nothing half-written
    assert [p.name for p in (tmp_path / "raw").iterdir()] == [".fashion_mnist.lock"]  # no staging left behind
    assert not (tmp_path / "data").exists()


def test_a_source_the_dataset_does_not_have_is_named(tmp_path):
    with pytest.raises(FetchError, match="cifar10 has no source 'debian'; its sources are canonical, local"):
        fetch_dataset(DataConfig(dataset="cifar10", sources=["debian"]), tmp_path / "cifar10",
                      tmp_path / "raw" / "cifar10")


def test_missing_dataset_says_to_fetch(tmp_path):
    with pytest.raises(DatasetError, match="modelyard fetch"):
        read_metadata(tmp_path)
    with pytest.raises(DatasetError, match="modelyard fetch"):
        load_split(tmp_path, "train")


def test_a_truncated_raw_archive_is_detected_and_fetched_again(fashion_mnist_dir, tmp_path):
    """A download cut half-way (as a copy that was interrupted, or a disk that filled up) leaves a gzip with
    no end: it is refused and fetched again, and a source that yields the same cut file replaces nothing."""
    raw = tmp_path / "raw" / "fashion_mnist"
    shutil.copytree(SHARED_RAW, raw)
    images = raw / "train-images-idx3-ubyte.gz"
    full_size = images.stat().st_size
    images.write_bytes(images.read_bytes()[: full_size // 2])
    with pytest.raises(EOFError):
        read_idx(images)

    cfg = DataConfig(dataset="fashion_mnist", sources=["local"], train_limit=1000, test_limit=100)
    out = fetch_dataset(cfg, tmp_path / "first" / "fashion_mnist", raw, local_dir=str(SHARED_RAW))
    assert read_metadata(out)["source"] == f"local:{SHARED_RAW}"
    assert (raw / "SOURCE").read_text().strip() == f"local:{SHARED_RAW}"
    assert images.stat().st_size == full_size
    full = load_split(fashion_mnist_dir, "train")
    assert np.array_equal(load_split(out, "train").images, full.images[:1000])

    cut = tmp_path / "cut"
    shutil.copytree(SHARED_RAW, cut)
    (cut / images.name).write_bytes((SHARED_RAW / images.name).read_bytes()[: full_size // 3])
    (raw / "SOURCE").unlink()  # force a fetch: the only source now serves a truncated file
    with pytest.raises(FetchError, match="could not fetch fashion_mnist"):
        fetch_dataset(cfg, tmp_path / "second" / "fashion_mnist", raw, local_dir=str(cut))
    assert images.stat().st_size == full_size  # the good copy is still there, untouched
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [".fashion_mnist.lock", "fashion_mnist"]
    assert not (tmp_path / "second").exists()


def test_a_local_copy_that_lacks_files_is_named(tmp_path):
    partial = tmp_path / "mine"
    partial.mkdir()
    shutil.copy(SHARED_RAW / "t10k-labels-idx1-ubyte.gz", partial)
    with pytest.raises(FetchError, match="local: .*lacks train-images-idx3-ubyte.gz"):
        fetch_dataset(DataConfig(dataset="fashion_mnist", sources=["local"]), tmp_path / "fashion_mnist",
                      tmp_path / "raw" / "fashion_mnist", local_dir=str(partial))
