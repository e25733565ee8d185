"""modelyard.data.prepare: the seeded stratified train/val split, the statistics fitted on its training rows
only, and the policy (the dataset's own augmentation with the run's `prepare.augment` changes), on real data;
a split cut from other data is refused before training."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from modelyard.config import PrepareConfig
from modelyard.data.dataset import load_split, read_metadata, write_dataset
from modelyard.data.prepare import (
    StaleSplitError,
    check_prepared,
    load_prepared,
    prepare_splits,
    stratified_split,
)
from modelyard.modalities.image import ImagePolicy
from modelyard.modalities.image.augment import fit_normalization
from modelyard.modalities.text import TextPolicy


def test_stratified_split_is_disjoint_balanced_and_seeded(test_sample):
    labels = np.repeat(np.arange(10), 100)
    train, val = stratified_split(labels, 0.1, seed=1)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 1000
    assert np.bincount(labels[val]).tolist() == [10] * 10
    assert np.array_equal(train, np.sort(train)) and np.array_equal(val, np.sort(val))
    again, _ = stratified_split(labels, 0.1, seed=1)
    other, _ = stratified_split(labels, 0.1, seed=2)
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    # On real, unevenly spread labels each class keeps its share (to the row).
    real_train, real_val = stratified_split(test_sample.labels, 0.2, seed=0)
    counts = np.bincount(test_sample.labels, minlength=10)
    held_out = np.bincount(test_sample.labels[real_val], minlength=10)
    assert held_out.tolist() == [round(c * 0.2) for c in counts]
    assert len(real_train) + len(real_val) == 200


def test_prepare_writes_the_split_the_training_statistics_and_the_datasets_policy(small_dataset_dir,
                                                                                    tmp_path):
    out = prepare_splits(small_dataset_dir, PrepareConfig(), tmp_path / "prepared")
    doc = json.loads((out / "prepared.json").read_text())
    meta = read_metadata(small_dataset_dir)
    assert (doc["dataset"], doc["modality"]) == ("fashion_mnist", "image")
    assert (doc["seed"], doc["val_fraction"]) == (42, 0.1)
    assert doc["dataset_sha256"] == meta["splits"]["train"]["sha256"]
    assert doc["counts"] == {"train": 3600, "val": 400}
    prepared = load_prepared(out)
    train = load_split(small_dataset_dir, "train")
    assert len(np.intersect1d(prepared.train_indices, prepared.val_indices)) == 0
    assert len(prepared.train_indices) + len(prepared.val_indices) == len(train) == 4000
    # Statistics of the training rows only: not of the validation rows, nor of the test split.
    mean, std = fit_normalization(train.images[prepared.train_indices])
    assert prepared.statistics == {"mean": mean, "std": std}
    assert fit_normalization(train.images)[0] != mean
    assert 0.25 < mean[0] < 0.32 and 0.33 < std[0] < 0.38  # Fashion-MNIST: ~0.286 / ~0.353
    # The dataset's own policy: the run changes nothing.
    assert prepared.policy == ImagePolicy(crop_padding=2, hflip_prob=0.5, erasing_prob=0.25)
    assert prepared.seed == 42 and prepared.dataset == "fashion_mnist"


def test_the_runs_augment_settings_change_only_what_they_name(small_dataset_dir, tmp_path):
    cfg = PrepareConfig(augment={"erasing_prob": 0.0, "erasing_scale": [0.1, 0.2]})
    policy = load_prepared(prepare_splits(small_dataset_dir, cfg, tmp_path / "prepared")).policy
    assert policy == ImagePolicy(crop_padding=2, hflip_prob=0.5, erasing_prob=0.0, erasing_scale=(0.1, 0.2))
    off = PrepareConfig(augment={"crop_padding": 0, "hflip_prob": 0.0, "erasing_prob": 0.0})
    assert load_prepared(prepare_splits(small_dataset_dir, off, tmp_path / "off")).policy.is_identity


@pytest.mark.parametrize(("augment", "needle"), [
    ({"token_swap_prob": 0.1},
     "prepare.augment: token_swap_prob: not an image augmentation setting; the image policy has "
     "crop_padding"),
    ({"erasing_scale": [0.5, 0.1]}, "prepare.augment: erasing_scale: expected 0 < low <= high"),
    ({"crop_padding": "two"}, "prepare.augment: "),
])
def test_a_setting_the_policy_does_not_take_is_refused_naming_prepare_augment(small_dataset_dir, tmp_path,
                                                                               augment, needle):
    with pytest.raises(ValueError) as exc:
        prepare_splits(small_dataset_dir, PrepareConfig(augment=augment), tmp_path / "prepared")
    assert str(exc.value).startswith(needle)
    assert not (tmp_path / "prepared").exists()  # refused before anything is written


def test_a_text_dataset_gets_the_text_policy_and_no_statistics(rt_polarity_dir, tmp_path):
    cfg = PrepareConfig(val_fraction=0.2, seed=3, augment={"token_delete_prob": 0.1})
    prepared = load_prepared(prepare_splits(rt_polarity_dir, cfg, tmp_path / "prepared"))
    assert prepared.policy == TextPolicy(token_delete_prob=0.1, token_swap_prob=0.0)
    assert prepared.statistics == {}
    labels = load_split(rt_polarity_dir, "train").labels
    assert abs(len(prepared.val_indices) / len(labels) - 0.2) < 0.001
    assert abs(labels[prepared.val_indices].mean() - labels.mean()) < 0.005  # stratified
    with pytest.raises(ValueError, match="prepare.augment: crop_padding: not a text augmentation setting"):
        prepare_splits(rt_polarity_dir, PrepareConfig(augment={"crop_padding": 2}), tmp_path / "refused")


def test_the_split_is_a_function_of_the_seed(small_dataset_dir, tmp_path):
    first = load_prepared(prepare_splits(small_dataset_dir, PrepareConfig(seed=5), tmp_path / "a"))
    again = load_prepared(prepare_splits(small_dataset_dir, PrepareConfig(seed=5), tmp_path / "b"))
    other = load_prepared(prepare_splits(small_dataset_dir, PrepareConfig(seed=6), tmp_path / "c"))
    assert np.array_equal(first.val_indices, again.val_indices)
    assert not np.array_equal(first.val_indices, other.val_indices)


def test_the_test_split_is_not_read(small_dataset_dir, tmp_path):
    copy = tmp_path / "fashion_mnist"
    shutil.copytree(small_dataset_dir, copy)
    (copy / "test.npz").write_bytes(b"not an npz: prepare must not need it")
    prepared = load_prepared(prepare_splits(copy, PrepareConfig(), tmp_path / "prepared"))
    assert prepared.dataset == "fashion_mnist" and len(prepared.train_indices) == 3600


def test_a_split_cut_from_other_data_is_refused(small_dataset_dir, tmp_path):
    with pytest.raises(StaleSplitError, match="no prepared split at .*: run `modelyard prepare` first"):
        check_prepared(tmp_path / "nothing", small_dataset_dir)
    prepared = prepare_splits(small_dataset_dir, PrepareConfig(), tmp_path / "prepared")
    check_prepared(prepared, small_dataset_dir)  # cut from these data: fine
    meta = read_metadata(small_dataset_dir)
    train = load_split(small_dataset_dir, "train")
    splits = {"train": train.take(slice(0, 3000)), "test": load_split(small_dataset_dir, "test")}
    changed = write_dataset(tmp_path / "changed" / "fashion_mnist", splits, meta["classes"],
                            source="a smaller cut", name="fashion_mnist", modality="image")
    with pytest.raises(StaleSplitError) as exc:
        check_prepared(prepared, changed)
    message = str(exc.value)
    assert "re-run `modelyard prepare`" in message
    assert meta["splits"]["train"]["sha256"][:12] in message
    assert read_metadata(changed)["splits"]["train"]["sha256"][:12] in message
