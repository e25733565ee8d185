"""What every registered dataset must do, tested by being added: its module names it and its modality, the
project's fetch code gets a real copy, the dataset's own suite passes it, and broken copies are refused with
the expectation named. (tests/helpers/data.py says where each dataset's real data come from here.)"""

from __future__ import annotations

import numpy as np
import pytest

from helpers.data import CONTRACT_FETCH, contract_copy
from modelyard.config import ValidateConfig
from modelyard.data.dataset import load_split, read_metadata, write_dataset
from modelyard.data.datasets import dataset_names, get_dataset
from modelyard.data.validate import DataValidationError, validate_dataset
from modelyard.modalities import modality_names

DATASETS = dataset_names()


@pytest.mark.parametrize("name", DATASETS)
def test_the_module_describes_its_dataset(name):
    spec = get_dataset(name)
    assert spec.name == name, f"{name}.py describes {spec.name!r}"
    assert spec.modality in modality_names()
    assert len(spec.classes) >= 2 and len(set(spec.classes)) == len(spec.classes)
    assert list(spec.sources)[-1] == "local", "the user's own copy is always the last resort"
    assert 0 <= spec.class_fraction[0] < spec.class_fraction[1] <= 1
    assert name in CONTRACT_FETCH, f"say in tests/helpers/data.py where the tests get {name}'s real data"


@pytest.fixture(scope="module", params=DATASETS)
def copy(request, tmp_path_factory):
    name = request.param
    return name, contract_copy(name, tmp_path_factory.mktemp(name))


def test_a_real_copy_is_fetched_and_passes_its_suite(copy, tmp_path):
    name, dataset_dir = copy
    meta = read_metadata(dataset_dir)
    assert meta["name"] == name and meta["modality"] == get_dataset(name).modality
    assert {split: len(load_split(dataset_dir, split)) for split in ("train", "test")} == \
        {split: meta["splits"][split]["count"] for split in ("train", "test")}
    report = validate_dataset(dataset_dir, ValidateConfig(), tmp_path / "report")
    assert report.success and len(report.checks) >= 10


def _rewrite(dataset_dir, out, train=None, test=None):
    meta = read_metadata(dataset_dir)
    splits = {"train": train or load_split(dataset_dir, "train"), "test": test or load_split(dataset_dir, "test")}
    return write_dataset(out, splits, meta["classes"], source="corrupted copy", name=meta["name"],
                         modality=meta["modality"])


def test_a_label_outside_the_classes_is_refused_naming_the_rows(copy, tmp_path):
    name, dataset_dir = copy
    train = load_split(dataset_dir, "train")
    labels = train.labels.copy()
    labels[[0, 5]] = len(get_dataset(name).classes)  # one past the last class
    broken = _rewrite(dataset_dir, tmp_path / name, train=type(train)(**{**vars(train), "labels": labels}))
    with pytest.raises(DataValidationError) as exc:
        validate_dataset(broken, ValidateConfig(), tmp_path / "report")
    failed = {(c.table, c.column) for c in exc.value.report.failed}
    assert ("rows", "label") in failed, failed
    assert (tmp_path / "report" / "report.md").read_text().count("**FAIL**") == len(exc.value.report.failed)


def test_test_rows_copied_into_train_are_refused_as_leakage(copy, tmp_path):
    name, dataset_dir = copy
    train, test = load_split(dataset_dir, "train"), load_split(dataset_dir, "test")
    leaked = test.take(np.arange(max(2, len(test) // 10)))  # a tenth of the test rows
    merged = type(train)(**{k: (v + getattr(leaked, k) if isinstance(v, list) else np.concatenate([v, getattr(leaked, k)]))
                            for k, v in vars(train).items()})
    broken = _rewrite(dataset_dir, tmp_path / name, train=merged)
    with pytest.raises(DataValidationError) as exc:
        validate_dataset(broken, ValidateConfig(), tmp_path / "report")
    assert any(c.table == "overlap" and c.column == "in_train" for c in exc.value.report.failed)
