"""modelyard.data.validate: the GX suites pass on the real Fashion-MNIST and stop deliberately broken copies
of it with a report naming the expectation, how many rows break it and which; training refuses data that
failed or changed after validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelyard.config import ValidateConfig
from modelyard.data.dataset import load_split, read_metadata, write_dataset
from modelyard.data.datasets import get_dataset
from modelyard.data.validate import (
    DataChangedError,
    DataValidationError,
    build_tables,
    check_validated,
    thresholds,
    validate_dataset,
    validate_splits,
)
from modelyard.modalities.image import ImageSplit

FASHION = get_dataset("fashion_mnist")


@pytest.fixture(scope="module")
def real_splits(small_dataset_dir):
    return {s: load_split(small_dataset_dir, s) for s in ("train", "test")}


def check(splits, **cfg):
    return validate_splits(splits, ValidateConfig(**cfg), FASHION)


def failures(report):
    return {(c.table, c.expectation, c.column) for c in report.failed}


def broken_copy(small_dataset_dir, out, **splits):
    meta = read_metadata(small_dataset_dir)
    full = {s: load_split(small_dataset_dir, s) for s in ("train", "test")} | splits
    return write_dataset(out, full, meta["classes"], source="broken copy", name=meta["name"],
                         modality="image")


def test_full_real_dataset_passes_and_writes_a_report(fashion_mnist_dir, tmp_path):
    report = validate_dataset(fashion_mnist_dir, ValidateConfig(), tmp_path)
    assert report.success and len(report.checks) >= 12
    assert {c.table for c in report.checks} == {"rows", "splits", "classes", "overlap"}
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["success"] is True and saved["failed"] == 0 and saved["dataset"] == "fashion_mnist"
    meta = read_metadata(fashion_mnist_dir)
    # What was checked, by hash: training compares the data with it.
    assert saved["split_sha256"] == {s: meta["splits"][s]["sha256"] for s in ("train", "test")}
    assert "PASSED" in (tmp_path / "report.md").read_text()
    counts = {c.column: c.element_count for c in report.checks if c.table == "rows"}
    assert counts["label"] == 70000


def test_the_tables_summarise_every_row_split_class_and_overlap(real_splits):
    tables = build_tables(real_splits, FASHION)
    assert set(tables) == {"rows", "splits", "classes", "overlap"}
    assert len(tables["rows"]) == 5000 and tables["rows"]["height"].unique().tolist() == [28]
    assert tables["splits"].to_dict("records") == [{"split": "train", "rows": 4000, "labels": 4000},
                                                   {"split": "test", "rows": 1000, "labels": 1000}]
    assert len(tables["classes"]) == 20 and tables["classes"]["count"].sum() == 5000
    assert list(tables["overlap"].columns) == ["split", "index", "in_train"]
    assert len(tables["overlap"]) == 1000


def test_the_bounds_are_the_datasets_unless_the_run_sets_them():
    assert thresholds(ValidateConfig(), FASHION) == {"min_class_fraction": 0.05, "max_class_fraction": 0.20,
                                                     "max_train_test_overlap": 0.01}
    assert thresholds(ValidateConfig(max_class_fraction=0.5), FASHION)["max_class_fraction"] == 0.5
    assert thresholds(ValidateConfig(), get_dataset("rt_polarity"))["max_train_test_overlap"] == 0.0


def test_out_of_range_labels_are_caught_with_their_rows(real_splits):
    train = real_splits["train"]
    labels = train.labels.copy()
    labels[[3, 17, 250]] = [12, -1, 10]
    report = check({**real_splits, "train": ImageSplit(train.images, labels)})
    bad = next(c for c in report.failed if c.column == "label")
    assert bad.table == "rows" and bad.unexpected_count == 3
    assert {(e["split"], e["index"]) for e in bad.examples} == {("train", 3), ("train", 17), ("train", 250)}


def test_nans_in_pixels_are_caught(real_splits):
    test = real_splits["test"]
    images = test.images.astype(np.float32)
    images[5, 10, 10] = np.nan
    images[9, :, :] = np.nan
    report = check({**real_splits, "test": ImageSplit(images, test.labels)})
    found = failures(report)
    assert ("rows", "expect_column_values_to_be_between", "nonfinite") in found
    assert ("rows", "expect_column_values_to_be_in_set", "dtype") in found
    nan_check = next(c for c in report.failed if c.column == "nonfinite")
    assert nan_check.unexpected_count == 2


def test_wrong_image_shape_is_caught(real_splits):
    train = real_splits["train"]
    report = check({**real_splits, "train": ImageSplit(train.images[:, :27, :], train.labels)})
    assert ("rows", "expect_column_values_to_be_in_set", "height") in failures(report)
    assert ("rows", "expect_column_values_to_be_in_set", "width") not in failures(report)


def test_empty_split_and_count_mismatch_are_caught(real_splits):
    test = real_splits["test"]
    report = check({**real_splits, "test": ImageSplit(test.images[:0], test.labels[:0])})
    assert ("splits", "expect_column_values_to_be_between", "rows") in failures(report)
    report = check({**real_splits, "test": ImageSplit(test.images, test.labels[:-7])})
    assert any(c.expectation == "expect_column_pair_values_to_be_equal" for c in report.failed)


def test_class_imbalance_beyond_bounds_is_caught(real_splits):
    train = real_splits["train"]
    keep = (train.labels != 3) | (np.arange(len(train)) % 10 == 0)  # drop 90% of 'Dress'
    report = check({**real_splits, "train": ImageSplit(train.images[keep], train.labels[keep])})
    bad = next(c for c in report.failed if c.table == "classes")
    assert any(e.get("label") == 3 for e in bad.examples)
    assert check({**real_splits, "train": ImageSplit(train.images[keep], train.labels[keep])},
                 min_class_fraction=0.0).success  # within the run's looser bound


def test_train_test_leakage_above_the_bound_is_caught(real_splits):
    train, test = real_splits["train"], real_splits["test"]
    leaked = ImageSplit(np.concatenate([train.images, test.images[:50]]),
                        np.concatenate([train.labels, test.labels[:50]]))
    report = check({**real_splits, "train": leaked}, max_train_test_overlap=0.01)  # 50/1000 = 5% > 1%
    bad = next(c for c in report.failed if c.table == "overlap")
    assert bad.unexpected_count == 50
    # Within a looser bound:
    assert check({**real_splits, "train": leaked}, max_train_test_overlap=0.10).success


def test_failed_validation_raises_with_a_readable_report_and_leaves_the_data_alone(small_dataset_dir,
                                                                                    tmp_path):
    train = load_split(small_dataset_dir, "train")
    labels = train.labels.copy()
    labels[:40] = 99
    broken = broken_copy(small_dataset_dir, tmp_path / "broken" / "fashion_mnist",
                         train=ImageSplit(train.images, labels))
    before = {p.name: p.read_bytes() for p in broken.iterdir()}
    with pytest.raises(DataValidationError) as exc:
        validate_dataset(broken, ValidateConfig(), tmp_path / "report")
    assert "rows.expect_column_values_to_be_in_set(label)" in str(exc.value)
    assert exc.value.report.failed and not exc.value.report.success
    md = (tmp_path / "report" / "report.md").read_text()
    assert "FAILED" in md and "**FAIL**" in md and "label" in md and "| 40 |" in md
    assert json.loads((tmp_path / "report" / "report.json").read_text())["success"] is False
    assert {p.name: p.read_bytes() for p in broken.iterdir()} == before


def test_cli_validate_exits_nonzero_and_prints_the_report(small_dataset_dir, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from modelyard.cli import app

    train = load_split(small_dataset_dir, "train")
    images = train.images.copy()
    images[7] = 0  # an all-black image is fine once...
    broken_copy(small_dataset_dir, tmp_path / "data" / "fashion_mnist",
                train=ImageSplit(images[:, :, :20], train.labels))  # ...but 28x20 is not
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"dataset": "fashion_mnist"}, "model": {"name": "cnn"},
                                      "paths": {"data_dir": str(tmp_path / "data"),
                                                "artifacts_dir": str(tmp_path / "artifacts")}}))
    result = CliRunner().invoke(app, ["validate", "--params", str(params)])
    assert result.exit_code == 1
    assert "width" in result.output and "FAILED" in result.output
    assert (tmp_path / "artifacts" / "fashion_mnist" / "cnn" / "validation" / "report.json").is_file()


def test_training_refuses_data_that_failed_or_changed_after_validation(small_dataset_dir, tmp_path, caplog):
    data = broken_copy(small_dataset_dir, tmp_path / "data" / "fashion_mnist")  # an intact copy
    check_validated(tmp_path / "no-report", data)  # never validated: a warning, not an error
    assert "training on data that were not validated" in caplog.text
    validate_dataset(data, ValidateConfig(), tmp_path / "report")
    check_validated(tmp_path / "report", data)  # validated and unchanged: fine
    test = load_split(data, "test")
    labels = test.labels.copy()
    labels[0] = (labels[0] + 1) % 10
    broken_copy(small_dataset_dir, data, test=ImageSplit(test.images, labels))  # changed after validation
    with pytest.raises(DataChangedError, match="the test split in .* changed after validation"):
        check_validated(tmp_path / "report", data)
    labels[:40] = 99
    broken_copy(small_dataset_dir, data, test=ImageSplit(test.images, labels))
    with pytest.raises(DataValidationError):
        validate_dataset(data, ValidateConfig(), tmp_path / "report")
    with pytest.raises(DataChangedError, match="the last validation of fashion_mnist failed"):
        check_validated(tmp_path / "report", data)
