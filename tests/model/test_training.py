"""A short real training run through Ray Train: the loss falls, accuracy clears a bound, and the run leaves
per-epoch checkpoints, TensorBoard events and a model a Predictor can load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import small_config

from modelyard.data.augment import prepare_splits
from modelyard.data.dataset import load_split
from modelyard.inference import Predictor

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(small_dataset_dir, tmp_path_factory):
    import ray

    from modelyard.training.distributed import train

    tmp = tmp_path_factory.mktemp("train")
    cfg = small_config(tmp, small_dataset_dir.parent, train={"epochs": 3, "num_workers": 2})
    prepared = prepare_splits(small_dataset_dir, cfg.augment)
    result = train(cfg, small_dataset_dir, prepared)
    assert not ray.is_initialized()  # train() shuts down the Ray it started
    return cfg, result


def test_loss_falls_and_validation_accuracy_clears_a_bound(trained):
    _, result = trained
    losses = [h["train/loss"] for h in result.history]
    assert len(losses) == 3 and losses[-1] < losses[0] * 0.8
    assert result.final["val/accuracy"] > 0.70  # 3.6k real training images, 3 epochs; chance is 0.10


def test_model_generalises_to_the_untouched_test_split(trained, small_dataset_dir):
    _, result = trained
    predictor = Predictor.from_dir(result.model_dir)
    test = load_split(small_dataset_dir, "test")
    accuracy = (predictor.predict_proba(test.images).argmax(1) == test.labels).mean()
    assert accuracy > 0.70
    # Behaviour: the classes any shoe-vs-clothes model separates (trousers, bags, sneakers) come out best.
    easy = np.isin(test.labels, [1, 7, 8])
    assert (predictor.predict_proba(test.images[easy]).argmax(1) == test.labels[easy]).mean() > accuracy


def test_run_leaves_checkpoints_tensorboard_and_a_self_describing_model(trained):
    cfg, result = trained
    out = Path(cfg.train.output_dir)
    spec = json.loads((out / "model" / "model.json").read_text())
    assert spec["family"] == "cnn" and spec["labels"][6] == "Shirt"
    assert 0.2 < spec["preprocessing"]["mean"][0] < 0.4 and spec["preprocessing"]["input_shape"] == [28, 28, 1]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    checkpoints = [p for p in (out.parent / "ray").glob("train-*/checkpoint_*") if p.is_dir()]
    assert len(checkpoints) == 2  # one per epoch, the newest two kept
    saved = json.loads((out / "train.json").read_text())
    assert saved["epochs"] == 3 and saved["num_workers"] == 2 and saved["device"] == "cpu"
    assert saved["cpus_per_worker"] == 1  # two workers share this 2-core machine's cores
    assert 0 < saved["startup_s"] < saved["wall_time_s"] and saved["resumed_after_epochs"] == []
    # `auto` precision was resolved on the worker's CPU and recorded: bf16 only where it is native.
    from modelyard.training.loop import cpu_bf16_support

    assert saved["precision"] == ("bf16" if cpu_bf16_support() else "none") and saved["precision_reason"]


def test_training_is_reproducible_in_its_data_order(small_dataset_dir, tmp_path):
    """Same seed, same shard order: the split and the per-epoch permutations do not depend on the run."""
    from modelyard.config import AugmentConfig
    from modelyard.data.augment import load_prepared

    a = load_prepared(prepare_splits(small_dataset_dir, AugmentConfig(prepared_dir=str(tmp_path / "a"))))
    b = load_prepared(prepare_splits(small_dataset_dir, AugmentConfig(prepared_dir=str(tmp_path / "b"))))
    assert np.array_equal(a.train_indices, b.train_indices) and a.mean == b.mean


def test_a_refused_training_starts_nothing_and_leaves_the_previous_output_intact(small_dataset_dir, tmp_path):
    import ray

    from modelyard.training.distributed import train

    cfg = small_config(tmp_path, small_dataset_dir.parent, train={"mixed_precision": "fp16"})  # no GPU here
    previous = Path(cfg.train.output_dir)
    (previous / "model").mkdir(parents=True)
    (previous / "model" / "model.pt").write_bytes(b"weights of the last good run")
    prepared = prepare_splits(small_dataset_dir, cfg.augment)
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        train(cfg, small_dataset_dir, prepared)
    assert not ray.is_initialized()  # the configuration was checked before Ray was started
    assert (previous / "model" / "model.pt").read_bytes() == b"weights of the last good run"
    assert not any(".partial" in p.name for p in previous.parent.iterdir())


def test_a_split_cut_from_other_data_is_refused_with_the_stage_to_rerun(fashion_mnist_dir, tmp_path):
    """`fetch` with a new train_limit after `augment`: the old split's indices no longer fit the data."""
    import ray

    from modelyard import stages
    from modelyard.data.augment import StaleSplitError

    data_dir = tmp_path / "data"
    (data_dir / "raw").mkdir(parents=True)
    (data_dir / "raw" / "fashion_mnist").symlink_to(fashion_mnist_dir.parent / "raw" / "fashion_mnist")
    cfg = small_config(tmp_path, data_dir, data={"train_limit": 3000, "test_limit": 500})
    stages.fetch(cfg)
    stages.augment(cfg)
    smaller = cfg.with_overrides({"data": {"train_limit": 1000}})
    stages.fetch(smaller)
    with pytest.raises(StaleSplitError, match=r"re-run `modelyard augment`") as exc:
        stages.train(smaller, track=False)
    assert "was cut from dataset" in str(exc.value)
    assert not ray.is_initialized()


def test_data_changed_on_disk_after_validation_is_refused_by_training(small_dataset_dir, tmp_path):
    """One label of the validated train split is edited in place (dataset.json left as it was, so only the
    data themselves tell): training refuses, naming the split and what to re-run; a failed validation too."""
    import shutil

    import ray

    from modelyard import stages
    from modelyard.data.validate import DataChangedError

    data_dir = tmp_path / "data"
    shutil.copytree(small_dataset_dir, data_dir / small_dataset_dir.name)
    cfg = small_config(tmp_path, data_dir)
    dataset_dir = Path(cfg.data.dataset_dir)
    assert dataset_dir.name == small_dataset_dir.name
    stages.validate(cfg)
    stages.augment(cfg)
    train = load_split(dataset_dir, "train")
    labels = train.labels.copy()
    labels[0] = (labels[0] + 1) % 10
    np.savez_compressed(dataset_dir / "train.npz", images=train.images, labels=labels)
    with pytest.raises(DataChangedError, match=r"the train split in .* changed after validation .*validate it again"):
        stages.train(cfg, track=False)
    assert not ray.is_initialized()

    report = Path(cfg.validate_.report_dir) / "report.json"
    doc = json.loads(report.read_text())
    report.write_text(json.dumps({**doc, "success": False, "failed": 1}))
    with pytest.raises(DataChangedError, match="the last validation of fashion_mnist failed"):
        stages.train(cfg, track=False)
