import gzip
import shutil

import numpy as np
import pytest

from modelyard.config import DataConfig
from modelyard.data.dataset import DatasetError, load_split, read_metadata
from modelyard.data.datasets import SourceContext, get_dataset
from modelyard.data.datasets.fashion_mnist import read_idx
from modelyard.data.fetch import FetchError, _ensure_raw, fetch_dataset


def test_fetch_produces_the_documented_format(fashion_mnist_dir):
    meta = read_metadata(fashion_mnist_dir)
    assert meta["format"] == "modelyard-image-npz/1"
    assert meta["classes"][6] == "Shirt" and len(meta["classes"]) == 10
    assert {k: v["count"] for k, v in meta["splits"].items()} == {"train": 60000, "test": 10000}
    train = load_split(fashion_mnist_dir, "train")
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == np.uint8
    assert np.bincount(train.labels).tolist() == [6000] * 10


def test_second_fetch_reuses_what_is_there(fashion_mnist_dir):
    before = {p.name: p.stat().st_mtime_ns for p in fashion_mnist_dir.iterdir()}
    raw = fashion_mnist_dir.parent / "raw" / "fashion_mnist"
    raw_before = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    fetch_dataset(DataConfig(data_dir=str(fashion_mnist_dir.parent)))
    assert {p.name: p.stat().st_mtime_ns for p in fashion_mnist_dir.iterdir()} == before
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == raw_before


def test_limits_cut_a_subset_from_the_cached_raw_files(fashion_mnist_dir, tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "fashion_mnist").symlink_to(fashion_mnist_dir.parent / "raw" / "fashion_mnist")
    out = fetch_dataset(DataConfig(data_dir=str(tmp_path), train_limit=500, test_limit=100, sources=["debian"]))
    assert len(load_split(out, "train")) == 500 and len(load_split(out, "test")) == 100
    full = load_split(fashion_mnist_dir, "train")
    assert np.array_equal(load_split(out, "train").images, full.images[:500])


def test_read_idx_rejects_truncated_and_foreign_files(fashion_mnist_dir, tmp_path):
    raw = fashion_mnist_dir.parent / "raw" / "fashion_mnist" / "t10k-labels-idx1-ubyte.gz"
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
    with pytest.raises(FetchError, match="could not fetch fashion_mnist from any source.*apt-get"):
        _ensure_raw(get_dataset("fashion_mnist"), tmp_path / "raw" / "fashion_mnist", ["debian"], SourceContext(1))
    assert not (tmp_path / "raw" / "fashion_mnist").exists()  # nothing half-written
    assert list((tmp_path / "raw").iterdir()) == []  # no staging directory left behind


def test_a_source_the_dataset_does_not_have_is_named(tmp_path):
    with pytest.raises(FetchError, match="cifar10 has no source 'debian'; its sources are canonical, local"):
        fetch_dataset(DataConfig(dataset="cifar10", data_dir=str(tmp_path), sources=["debian"]))


def test_missing_dataset_says_to_fetch(tmp_path):
    with pytest.raises(DatasetError, match="modelyard fetch"):
        read_metadata(tmp_path)


def test_a_truncated_raw_archive_is_detected_and_fetched_again(fashion_mnist_dir, tmp_path):
    """A download cut half-way (as a copy that was interrupted, or a disk that filled up) leaves a gzip with no
    end: it is refused and fetched again, and a source that yields the same cut file replaces nothing."""
    spec = get_dataset("fashion_mnist")
    shared = fashion_mnist_dir.parent / "raw" / "fashion_mnist"
    raw = tmp_path / "raw" / "fashion_mnist"
    shutil.copytree(shared, raw)
    images = raw / "train-images-idx3-ubyte.gz"
    full_size = images.stat().st_size
    images.write_bytes(images.read_bytes()[: full_size // 2])
    with pytest.raises(EOFError):
        read_idx(images)

    origin, splits = _ensure_raw(spec, raw, ["local"], SourceContext(local_dir=shared))
    assert origin.startswith("local:") and len(splits["train"]) == 60000
    assert images.stat().st_size == full_size

    cut = tmp_path / "cut"
    shutil.copytree(shared, cut)
    (cut / images.name).write_bytes((shared / images.name).read_bytes()[: full_size // 3])
    (raw / "SOURCE").unlink()  # force a fetch: the only source now serves a truncated file
    with pytest.raises(FetchError, match="could not fetch fashion_mnist"):
        _ensure_raw(spec, raw, ["local"], SourceContext(local_dir=cut))
    assert images.stat().st_size == full_size  # the good copy is still there, untouched
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["fashion_mnist"]  # no staging left
