"""The GX suite passes on the real data and rejects deliberately broken copies of it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelyard.config import ValidateConfig
from modelyard.data.dataset import ImageSplit, load_split, read_metadata, write_dataset
from modelyard.data.datasets import get_dataset
from modelyard.data.validate import DataValidationError, validate_dataset, validate_splits


@pytest.fixture(scope="module")
def real_splits(small_dataset_dir):
    return {s: load_split(small_dataset_dir, s) for s in ("train", "test")}


def check(splits, **cfg):
    return validate_splits(splits, ValidateConfig(**cfg), get_dataset("fashion_mnist"))


def failures(report):
    return {(c.table, c.expectation, c.column) for c in report.failed}


def test_full_real_dataset_passes_and_writes_a_report(fashion_mnist_dir, tmp_path):
    report = validate_dataset(fashion_mnist_dir, ValidateConfig(), tmp_path)
    assert report.success and len(report.checks) >= 12
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["success"] is True and saved["failed"] == 0
    assert "PASSED" in (tmp_path / "report.md").read_text()
    counts = {c.column: c.element_count for c in report.checks if c.table == "images"}
    assert counts["label"] == 70000


def test_out_of_range_labels_are_caught_with_their_rows(real_splits):
    train = real_splits["train"]
    labels = train.labels.copy()
    labels[[3, 17, 250]] = [12, -1, 10]
    report = check({**real_splits, "train": ImageSplit(train.images, labels)})
    bad = next(c for c in report.failed if c.column == "label")
    assert bad.unexpected_count == 3
    assert {(e["split"], e["index"]) for e in bad.examples} == {("train", 3), ("train", 17), ("train", 250)}


def test_nans_in_pixels_are_caught(real_splits):
    test = real_splits["test"]
    images = test.images.astype(np.float32)
    images[5, 10, 10] = np.nan
    images[9, :, :] = np.nan
    report = check({**real_splits, "test": ImageSplit(images, test.labels)})
    found = failures(report)
    assert ("images", "expect_column_values_to_be_between", "nonfinite") in found
    assert ("images", "expect_column_values_to_be_in_set", "dtype") in found
    nan_check = next(c for c in report.failed if c.column == "nonfinite")
    assert nan_check.unexpected_count == 2


def test_wrong_image_shape_is_caught(real_splits):
    train = real_splits["train"]
    report = check({**real_splits, "train": ImageSplit(train.images[:, :27, :], train.labels)})
    assert ("images", "expect_column_values_to_be_in_set", "height") in failures(report)
    assert ("images", "expect_column_values_to_be_in_set", "width") not in failures(report)


def test_empty_split_and_count_mismatch_are_caught(real_splits):
    test = real_splits["test"]
    report = check({**real_splits, "test": ImageSplit(test.images[:0], test.labels[:0])})
    assert ("splits", "expect_column_values_to_be_between", "images") in failures(report)
    report = check({**real_splits, "test": ImageSplit(test.images, test.labels[:-7])})
    assert any(c.expectation == "expect_column_pair_values_to_be_equal" for c in report.failed)


def test_class_imbalance_beyond_bounds_is_caught(real_splits):
    train = real_splits["train"]
    keep = (train.labels != 3) | (np.arange(len(train)) % 10 == 0)  # drop 90% of 'Dress'
    report = check({**real_splits, "train": ImageSplit(train.images[keep], train.labels[keep])})
    bad = next(c for c in report.failed if c.table == "classes")
    assert any(e.get("label") == 3 for e in bad.examples)


def test_train_test_leakage_above_the_bound_is_caught(real_splits):
    train, test = real_splits["train"], real_splits["test"]
    leaked = ImageSplit(np.concatenate([train.images, test.images[:50]]), np.concatenate([train.labels, test.labels[:50]]))
    report = check({**real_splits, "train": leaked}, max_train_test_overlap=0.01)  # 50/1000 = 5% > 1%
    bad = next(c for c in report.failed if c.table == "overlap")
    assert bad.unexpected_count == 50
    assert check({**real_splits, "train": leaked}, max_train_test_overlap=0.10).success  # within a looser bound


def test_failed_validation_raises_with_a_readable_report_and_leaves_the_data_alone(small_dataset_dir, tmp_path):
    meta = read_metadata(small_dataset_dir)
    train = load_split(small_dataset_dir, "train")
    labels = train.labels.copy()
    labels[:40] = 99
    broken = tmp_path / "broken" / "fashion_mnist"
    write_dataset(broken, {"train": ImageSplit(train.images, labels), "test": load_split(small_dataset_dir, "test")},
                  meta["classes"], source="broken copy", name=meta["name"])
    before = {p.name: p.read_bytes() for p in broken.iterdir()}
    with pytest.raises(DataValidationError) as exc:
        validate_dataset(broken, ValidateConfig(), tmp_path / "report")
    assert "label" in str(exc.value)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "FAILED" in md and "**FAIL**" in md and "label" in md and "| 40 |" in md
    assert {p.name: p.read_bytes() for p in broken.iterdir()} == before


def test_cli_validate_exits_nonzero_and_prints_the_report(small_dataset_dir, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from modelyard.cli import app

    meta = read_metadata(small_dataset_dir)
    train = load_split(small_dataset_dir, "train")
    images = train.images.copy()
    images[7] = 0  # an all-black image is fine once...
    broken = tmp_path / "data" / "fashion_mnist"
    write_dataset(broken, {"train": ImageSplit(images[:, :, :20], train.labels),  # ...but 28x20 is not
                           "test": load_split(small_dataset_dir, "test")},
                  meta["classes"], source="broken copy", name=meta["name"])
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"data_dir": str(tmp_path / "data")},
                                      "validate": {"report_dir": str(tmp_path / "report")}}))
    result = CliRunner().invoke(app, ["validate", "--params", str(params)])
    assert result.exit_code == 1
    assert "width" in result.output and "FAILED" in result.output
    assert (tmp_path / "report" / "report.json").is_file()
