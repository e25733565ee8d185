"""modelyard.data.datasets.cifar10: CIFAR-10 ships in no registry this machine reaches, so its reader, fetch
and validation are tested on directories in CIFAR's own pickle format built from real photographs
(scikit-image's sample photos cut into 32x32 tiles: helpers.data)."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from helpers.data import cifar_batches_dir, photo_tiles
from helpers.ports import free_port
from modelyard.config import DataConfig, ValidateConfig
from modelyard.data.dataset import load_split, read_metadata
from modelyard.data.datasets import get_dataset
from modelyard.data.datasets.cifar10 import FOLDER, read_raw, write_batches
from modelyard.data.fetch import FetchError, fetch_dataset
from modelyard.data.validate import validate_splits
from modelyard.modalities.image import ImageSplit

CIFAR = get_dataset("cifar10")


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    """A CIFAR-format directory: 5 train batches (500 images) + test_batch (100), 10 balanced labels."""
    tiles = photo_tiles(600)
    labels = np.arange(600) % 10
    splits = {"train": ImageSplit(tiles[:500], labels[:500]), "test": ImageSplit(tiles[500:], labels[500:])}
    root = tmp_path_factory.mktemp("cifar")
    write_batches(root / FOLDER, splits, list(CIFAR.classes))
    return root, splits


def test_the_reader_returns_height_width_channel_images_exactly(cifar_dir):
    root, written = cifar_dir
    splits = read_raw(root)
    assert splits["train"].images.shape == (500, 32, 32, 3) and splits["train"].images.dtype == np.uint8
    assert np.array_equal(splits["train"].images, written["train"].images)
    assert np.array_equal(splits["test"].images, written["test"].images)
    assert np.array_equal(splits["test"].labels, written["test"].labels)
    # The on-disk row layout is CIFAR's: 1024 red, then 1024 green, then 1024 blue values.
    with open(root / FOLDER / "data_batch_1", "rb") as fh:
        row = pickle.load(fh, encoding="latin1")["data"][0]
    assert np.array_equal(row[:1024].reshape(32, 32), written["train"].images[0][..., 0])
    assert np.array_equal(row[2048:].reshape(32, 32), written["train"].images[0][..., 2])


def test_a_reader_refuses_another_datasets_class_names(cifar_dir, tmp_path):
    _, written = cifar_dir
    write_batches(tmp_path / FOLDER, written, [f"class{i}" for i in range(10)])
    with pytest.raises(ValueError, match="batches.meta names classes"):
        read_raw(tmp_path)


def test_real_colour_images_pass_the_cifar_suite(cifar_dir):
    _, written = cifar_dir
    report = validate_splits(written, ValidateConfig(), CIFAR)
    assert report.success, report.to_markdown()
    assert any(c.column == "channels" for c in report.checks)


def test_gray_or_wrongly_sized_copies_fail_the_cifar_suite(cifar_dir):
    _, written = cifar_dir
    gray = {k: ImageSplit(v.images[..., 0], v.labels) for k, v in written.items()}  # (N, 32, 32)
    failed = {(c.table, c.column) for c in validate_splits(gray, ValidateConfig(), CIFAR).failed}
    assert ("rows", "ndim") in failed and ("rows", "channels") in failed
    small = {k: ImageSplit(v.images[:, :28, :28], v.labels) for k, v in written.items()}
    failed = {(c.table, c.column) for c in validate_splits(small, ValidateConfig(), CIFAR).failed}
    assert failed == {("rows", "height"), ("rows", "width")}


def test_a_collapsed_class_fails_with_the_datasets_own_bounds(cifar_dir):
    _, written = cifar_dir
    labels = written["train"].labels.copy()
    labels[labels == 3] = 4  # class 3 vanishes, class 4 doubles to 20%+
    broken = {"train": ImageSplit(written["train"].images, labels), "test": written["test"]}
    failed = validate_splits(broken, ValidateConfig(), CIFAR).failed
    assert [(c.table, c.column) for c in failed] == [("classes", "fraction")]


def test_the_local_source_reads_a_full_copy_and_refuses_a_partial_one(tmp_path):
    folder = cifar_batches_dir(tmp_path / "mine", train_per_class=50, test_per_class=10)
    # A real CIFAR-format copy, but of 500 images where CIFAR-10 has 50,000 training images.
    with pytest.raises(FetchError, match="local: cifar10 train: expected 50000 rows, got 500"):
        fetch_dataset(DataConfig(dataset="cifar10", sources=["local"]), tmp_path / "cifar10",
                      tmp_path / "raw" / "cifar10", local_dir=str(folder))
    assert not (tmp_path / "cifar10").exists() and not (tmp_path / "raw" / "cifar10").exists()


def test_the_local_source_cuts_the_configured_limits_from_a_full_copy(tmp_path, monkeypatch):
    import modelyard.data.datasets.cifar10 as cifar_module

    folder = cifar_batches_dir(tmp_path / "mine", train_per_class=60, test_per_class=20)  # 600 + 200
    written = read_raw(folder.parent)
    # Pretend the small copy is the full dataset, to run fetch end to end through the local source.
    small = dataclasses.replace(CIFAR, split_sizes={"train": 600, "test": 200})
    monkeypatch.setattr(cifar_module, "SPEC", small)
    cfg = DataConfig(dataset="cifar10", sources=["local"], train_limit=300)
    out = fetch_dataset(cfg, tmp_path / "cifar10", tmp_path / "raw" / "cifar10",
                        local_dir=str(folder.parent))  # the folder holding the copy will do too
    meta = read_metadata(out)
    assert meta["name"] == "cifar10" and meta["source"] == f"local:{folder}" and meta["modality"] == "image"
    assert load_split(out, "train").images.shape == (300, 32, 32, 3)
    assert np.array_equal(load_split(out, "train").images, written["train"].images[:300])
    assert np.array_equal(load_split(out, "test").images, written["test"].images)


def test_a_local_directory_that_is_not_a_cifar_copy_is_named(tmp_path):
    folder = cifar_batches_dir(tmp_path / "mine", train_per_class=5, test_per_class=2)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FetchError, match=f"is not a {FOLDER} directory: lacks data_batch_3"):
        fetch_dataset(DataConfig(dataset="cifar10", sources=["local"]), tmp_path / "cifar10",
                      tmp_path / "raw" / "cifar10", local_dir=str(folder))


def test_offline_with_no_local_copy_the_error_names_both_sources(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "url", f"http://127.0.0.1:{free_port()}/cifar-10-python.tar.gz")  # refused
    with pytest.raises(FetchError) as exc:
        fetch_dataset(DataConfig(dataset="cifar10", sources=["canonical", "local"]), tmp_path / "cifar10",
                      tmp_path / "raw" / "cifar10", timeout_s=3)
    message = str(exc.value)
    assert "canonical: torchvision's CIFAR10 download failed" in message
    assert "local: no local directory given (set paths.local_source_dir" in message
