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


class _Payload:
    """What a hostile `batches.meta` holds: loading it calls a function of the attacker's choosing (here one
    that only creates a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _plant(folder, name, doc) -> None:
    """Replace `name` by `doc` pickled, and record it in SHA256SUMS as a thorough attacker would."""
    import hashlib

    data = pickle.dumps(doc)
    (folder / name).write_bytes(data)
    sums = folder / "SHA256SUMS"
    lines = [ln for ln in (sums.read_text().splitlines() if sums.exists() else []) if not ln.endswith(f"  {name}")]
    (folder / "SHA256SUMS").write_text("\n".join([*lines, f"{hashlib.sha256(data).hexdigest()}  {name}"]) + "\n")


def test_a_crafted_batch_runs_no_code_even_with_matching_checksums(tmp_path):
    from modelyard.data.datasets.cifar10 import UnsafeBatchError

    folder = cifar_batches_dir(tmp_path / "raw", train_per_class=5, test_per_class=2)
    marker = tmp_path / "pwned"
    _plant(folder, "batches.meta", {"label_names": list(CIFAR.classes), "x": _Payload(marker)})
    with pytest.raises(UnsafeBatchError, match=r"asks for io\.open"):
        read_raw(folder.parent)
    assert not marker.exists()


def test_the_audits_attack_through_the_local_source_runs_no_code(tmp_path):
    """The audit's attack: a folder holding CIFAR's file names, a payload as batches.meta."""
    folder = cifar_batches_dir(tmp_path / "attacker", train_per_class=5, test_per_class=2)
    marker = tmp_path / "pwned"
    _plant(folder, "batches.meta", _Payload(marker))
    with pytest.raises(FetchError, match=r"asks for io\.open"):
        fetch_dataset(DataConfig(dataset="cifar10", sources=["local"]), tmp_path / "cifar10",
                      tmp_path / "raw" / "cifar10", local_dir=str(folder))
    assert not marker.exists()
    assert not (tmp_path / "cifar10").exists()


def test_a_batch_changed_after_the_fetch_or_too_large_or_unrecorded_is_refused_unopened(tmp_path):
    from modelyard.data.datasets.cifar10 import UnsafeBatchError

    folder = cifar_batches_dir(tmp_path / "raw", train_per_class=5, test_per_class=2)
    original = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(original[:-10] + b"0123456789")
    with pytest.raises(UnsafeBatchError, match="data_batch_2 is not the file the fetch recorded"):
        read_raw(folder.parent)
    (folder / "data_batch_2").write_bytes(b"\0" * (32 * 2**20 + 1))
    with pytest.raises(UnsafeBatchError, match=r"data_batch_2 is 33554433 bytes; a CIFAR data_batch_2 is at most"):
        read_raw(folder.parent)
    (folder / "data_batch_2").write_bytes(original)
    assert len(read_raw(folder.parent)["train"].labels) == 50
    (folder / "SHA256SUMS").unlink()
    with pytest.raises(UnsafeBatchError, match="has no SHA256SUMS"):
        read_raw(folder.parent)


def test_a_full_size_batch_that_is_not_cifars_published_file_is_named(tmp_path, caplog):
    folder = cifar_batches_dir(tmp_path / "mine", train_per_class=5, test_per_class=2)
    data = (folder / "test_batch").read_bytes()
    import modelyard.data.datasets.cifar10 as cifar_module

    cifar_module._copy_checked(folder, tmp_path / "copy")  # small batches: a cut, nothing to say
    assert "published file" not in caplog.text
    padded = tmp_path / "padded"
    padded.mkdir()
    for name in cifar_module.FILES:
        (padded / name).write_bytes((folder / name).read_bytes())
    (padded / "test_batch").write_bytes(data + b"\0" * (10_000 * 3072))  # as large as CIFAR's, not CIFAR's
    cifar_module._copy_checked(padded, tmp_path / "copy2")
    assert "test_batch is a full-size batch but not CIFAR's published file" in caplog.text


def test_batches_written_at_protocol_2_as_cifars_own_files_were_are_read(tmp_path):
    import hashlib

    folder = cifar_batches_dir(tmp_path / "raw", train_per_class=5, test_per_class=2)
    from modelyard.data.datasets.cifar10 import FILES

    sums = []
    for name in FILES:
        with open(folder / name, "rb") as fh:
            data = pickle.dumps(pickle.load(fh), protocol=2)  # noqa: S301 - the test's own file
        (folder / name).write_bytes(data)
        sums.append(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    (folder / "SHA256SUMS").write_text("".join(sums))
    assert read_raw(folder.parent)["test"].images.shape == (20, 32, 32, 3)
